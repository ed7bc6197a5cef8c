"""Generate the MindSpore checkpoint fixtures used by the ckpt reader tests.

This script needs a real MindSpore (developed against mindspore==2.10.0, CPU wheel, numpy 1.26.4,
protobuf 7.36.2). It is NOT run by the test suite; the tests only read its output, which is committed
under ``tests/fixtures/ckpt/``. Run it from the repository root with the MindSpore venv's Python:

    GLOG_v=3 /path/to/mindspore-venv/bin/python tests/gen_ckpt_fixtures.py

It (re)writes every ``*.ckpt`` / ``*.safetensors`` file in ``tests/fixtures/ckpt/`` plus
``tests/fixtures/ckpt/expected.json``. Output is deterministic (fixed values, seeds and keys) except
for the bytes of
  * the encrypted files: MindSpore draws a fresh random IV per block, so their ciphertext changes on
    every run while their plaintext stays the same;
  * safetensors files whose ``__metadata__`` has more than one key (``direct*.safetensors``,
    ``conv_src.safetensors``): the safetensors library writes metadata keys in random (Rust HashMap)
    order, so the header bytes are permuted between runs (same length, same content).
expected.json itself is byte-identical between runs.
(``tests/fixtures/dist/`` is a verbatim copy of the hand-built distributed sample and is not produced
here.)

expected.json: a dict keyed by file name; each value is

    {"format": "ckpt" | "safetensors" | "empty" | "encrypted",
     "crc": null | {"present": true, "value": int},
     "encryption": null | {"mode": str, "key_hex": str, "blocks": int, "plaintext_size": int},
     "loads_in_mindspore": bool,          # whole-file mindspore.load_checkpoint (with the key) succeeds
     "metadata": {...},                   # safetensors only: the __metadata__ dict
     "entries": [...]}

Entries are in file order for ckpt-like files (grouped by consecutive equal tags, as MindSpore groups
slices) and sorted by name for safetensors. Each entry:

    {"name": str,
     "dtype": tensor_type string as stored (ckpt) / safetensors dtype string (e.g. "F32"),
     "shape": logical shape ([] for scalars, for ``str`` values and for old-style dims=[0] scalars),
     "dims": dims as stored in the (last) record (ckpt only; e.g. [0] for str),
     "records": number of records with this tag in the file (ckpt only),
     "value_hex": hex of the C-order little-endian element bytes  -- or --
     "value_str": the Python str (for ``str`` entries),
     "source": "load_checkpoint" (value read back with mindspore.load_checkpoint, using choice_func
               to pick that single entry, so loadable entries of an otherwise unloadable file still
               count) or "written" (the bytes this script wrote; MindSpore cannot load them)}

MapTensor records (hand-made ``edge_maptensor.ckpt``) appear as three entries named
``<tag>/keys``, ``<tag>/values``, ``<tag>/status`` with ``"kind": "maptensor"``; dtype is the numpy
dtype name stored in the file, shape the concatenated shape, value_hex the concatenated parts, and
records the number of MapTensor records with that tag.

Every record count, dims, dtype and content recorded here is cross-checked against an independent
protobuf wire-format walker in this file, and (where MindSpore can load the entry) against
``mindspore.load_checkpoint``; the script aborts if any of them disagree.
"""

import binascii
import json
import os
import shutil
import struct
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("GLOG_v", "3")

import numpy as np  # noqa: E402

import mindspore as ms  # noqa: E402
from mindspore import Tensor, nn  # noqa: E402
from mindspore import dtype as mstype  # noqa: E402
from mindspore._c_expression import TensorPy, _decrypt  # noqa: E402
from mindspore.train import serialization as ser  # noqa: E402
from mindspore.train.checkpoint_pb2 import Checkpoint  # noqa: E402

OUT = Path(__file__).resolve().parent / "fixtures" / "ckpt"

KEY16 = b"0123456789abcdef"
KEY24 = b"0123456789abcdef01234567"
KEY32 = b"0123456789abcdef0123456789abcdef"

ENC_MAGIC = {b"\xd8\x5e\x3a\x7f": "AES-GCM", b"\xd9\x5e\x3a\x7f": "AES-CBC", b"\xda\x5e\x3a\x7f": "SM4-CBC"}

EXPECTED = {}


# ----------------------------------------------------------------------------------------------------
# Independent protobuf walker (no protobuf library)
# ----------------------------------------------------------------------------------------------------

def _varint(buf, pos):
    result = 0
    shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _fields(buf, start, end):
    """Yield (field_number, wire_type, value) where value is an int (varint) or a (start, end) span."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        fn, wt = key >> 3, key & 7
        if wt == 0:
            v, pos = _varint(buf, pos)
            yield fn, wt, v
        elif wt == 2:
            n, pos = _varint(buf, pos)
            yield fn, wt, (pos, pos + n)
            pos += n
        elif wt == 1:
            pos += 8
        elif wt == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wt} at {pos}")
    if pos != end:
        raise ValueError("field overran its message")


def _tensor_proto(buf, start, end):
    dims, ttype, content = [], None, b""
    for fn, wt, v in _fields(buf, start, end):
        if fn == 1 and wt == 0:
            dims.append(v if v < (1 << 63) else v - (1 << 64))
        elif fn == 2 and wt == 2:
            ttype = bytes(buf[v[0]:v[1]]).decode("ascii")
        elif fn == 3 and wt == 2:
            content = bytes(buf[v[0]:v[1]])
    return {"dims": dims, "type": ttype, "content": content}


def strip_crc(data):
    if len(data) >= 17 and data[-17:-10] == b"crc_num":
        return data[:-17], int.from_bytes(data[-10:], "big")
    return data, None


def walk_ckpt(data):
    """Records of a plain (CRC-stripped) checkpoint byte string, in file order."""
    records = []
    for fn, wt, (s, e) in _fields(data, 0, len(data)):
        assert fn == 1 and wt == 2, "top level must be Checkpoint.value"
        rec = {"tag": None}
        for fn2, wt2, v in _fields(data, s, e):
            if fn2 == 1:
                rec["tag"] = bytes(data[v[0]:v[1]]).decode("utf-8")
            elif fn2 == 2:
                rec["kind"] = "tensor"
                rec.update(_tensor_proto(data, *v))
            elif fn2 == 3:
                rec["kind"] = "maptensor"
                rec["parts"] = [_tensor_proto(data, *v3) for fn3, _, v3 in _fields(data, *v) if fn3 == 1]
        records.append(rec)
    return records


def group_records(records):
    groups = []
    for r in records:
        if groups and groups[-1][0]["tag"] == r["tag"]:
            groups[-1].append(r)
        else:
            groups.append([r])
    return groups


def enc_blocks(data):
    """Walk the encryption block framing; return (mode, number_of_blocks, trailer_bytes)."""
    pos, n, mode = 0, 0, None
    while pos < len(data) and data[pos:pos + 4] in ENC_MAGIC:
        m = ENC_MAGIC[data[pos:pos + 4]]
        assert mode in (None, m)
        mode = m
        pos += 4 + (16 if m == "AES-GCM" else 0)
        (block_len,) = struct.unpack_from("<I", data, pos)
        pos += 4
        (iv_len,) = struct.unpack_from("<I", data, pos)
        assert iv_len == 16
        (clen,) = struct.unpack_from("<I", data, pos + 4 + iv_len)
        assert block_len == 4 + iv_len + 4 + clen
        pos += block_len
        n += 1
    return mode, n, data[pos:]


# ----------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------

def fix_mode(path):
    os.chmod(path, 0o644)


def save(fname, save_obj, **kw):
    path = OUT / fname
    ms.save_checkpoint(save_obj, str(path), **kw)
    if kw.get("async_save"):
        ser._wait_async_thread_save_ckpt()  # pylint: disable=protected-access
    fix_mode(path)
    return path


def write_raw(fname, values):
    """Hand-write records with MindSpore's own checkpoint_pb2 classes (one Checkpoint per record)."""
    path = OUT / fname
    with open(path, "wb") as f:
        for tag, kind, parts in values:
            ckpt = Checkpoint()
            v = ckpt.value.add()
            v.tag = tag
            if kind == "tensor":
                dims, ttype, content = parts
                v.tensor.dims.extend(dims)
                v.tensor.tensor_type = ttype
                v.tensor.tensor_content = content
            else:  # maptensor, exactly like serialization._write_mapparameter
                for arr in parts:
                    tp = v.maptensor.tensor.add()
                    tp.dims.extend(arr.shape)
                    tp.tensor_type = str(arr.dtype)
                    tp.tensor_content = arr.reshape(-1).tobytes()
            f.write(ckpt.SerializeToString())
    fix_mode(path)
    return path


def t(arr, dtype=None):
    return Tensor(arr, dtype=dtype) if dtype is not None else Tensor(arr)


def raw_tensor(b, shape, dtype):
    return Tensor(TensorPy.convert_bytes_to_tensor(b, tuple(shape), dtype))


def try_load(path, name=None, **kw):
    """mindspore.load_checkpoint of one entry (or the whole file); None if it fails."""
    try:
        if name is None:
            return ms.load_checkpoint(str(path), **kw)
        d = ms.load_checkpoint(str(path), choice_func=lambda n: n == name, **kw)
        return d.get(name)
    except Exception:  # pylint: disable=broad-except
        return None


def _np_bytes(p):
    return p.asnumpy().tobytes()


def ckpt_entries(path, plain, written, load_kw):
    """Build entries for a plain checkpoint byte string (CRC trailer already stripped).

    written: {name: bytes | str | (keys, values, status) arrays} -- what this script put there.
    """
    entries = []
    groups = group_records(walk_ckpt(plain))
    names = [g[0]["tag"] for g in groups]
    assert len(names) == len(set(names)), f"{path.name}: non-adjacent duplicate tags"
    assert set(names) == set(written), f"{path.name}: walker {names} vs written {list(written)}"
    for g in groups:
        tag = g[0]["tag"]
        kinds = {r["kind"] for r in g}
        assert len(kinds) == 1
        if kinds == {"maptensor"}:
            loaded = try_load(path, tag, **load_kw)
            for i, part in enumerate(("keys", "values", "status")):
                file_bytes = b"".join(r["parts"][i]["content"] for r in g)
                dtypes = {r["parts"][i]["type"] for r in g}
                assert len(dtypes) == 1
                arr = written[tag][i]
                assert file_bytes == arr.tobytes()
                assert sum(r["parts"][i]["dims"][0] for r in g) == arr.shape[0]
                e = {"name": f"{tag}/{part}", "kind": "maptensor", "dtype": dtypes.pop(),
                     "shape": list(arr.shape), "records": len(g)}
                if loaded is not None:
                    part_arr = loaded[i].asnumpy() if hasattr(loaded[i], "asnumpy") else np.asarray(loaded[i])
                    assert part_arr.tobytes() == file_bytes
                    assert list(part_arr.shape) == list(arr.shape)
                    e.update(value_hex=file_bytes.hex(), source="load_checkpoint")
                else:
                    e.update(value_hex=file_bytes.hex(), source="written")
                entries.append(e)
            continue
        types = {r["type"] for r in g}
        assert len(types) == 1, f"{tag}: mixed tensor_type in slices"
        ttype = types.pop()
        dims = g[-1]["dims"]
        assert all(r["dims"] == dims for r in g), f"{tag}: slices disagree on dims"
        file_bytes = b"".join(r["content"] for r in g)
        shape = [] if dims == [0] else list(dims)
        e = {"name": tag, "dtype": ttype, "shape": shape, "dims": list(dims), "records": len(g)}
        want = written[tag]
        loaded = try_load(path, tag, **load_kw)
        if ttype == "str":
            s = file_bytes.decode("utf-32-le").rstrip("\x00")
            assert s == want, (s, want)
            if loaded is not None:
                assert loaded == want
            e.update(value_str=want, source="load_checkpoint" if loaded is not None else "written")
        else:
            assert file_bytes == want, f"{path.name}:{tag}: file bytes differ from written bytes"
            if loaded is not None:
                lb = _np_bytes(loaded)
                assert lb == file_bytes, f"{path.name}:{tag}: loaded bytes differ"
                assert list(loaded.shape) == shape, (tag, loaded.shape, shape)
                e.update(value_hex=lb.hex(), source="load_checkpoint")
            else:
                e.update(value_hex=want.hex(), source="written")
        entries.append(e)
    return entries


def record_ckpt(fname, written, load_kw=None, enc=None):
    """Analyse a written ckpt fixture and put its description into EXPECTED."""
    path = OUT / fname
    load_kw = dict(load_kw or {})
    data = path.read_bytes()
    info = {"format": "ckpt", "crc": None, "encryption": None}
    if not data:
        info.update(format="empty", loads_in_mindspore=try_load(path, **load_kw) is not None, entries=[])
        assert not written
        EXPECTED[fname] = info
        return info
    if enc is not None:
        mode, key = enc
        fmode, nblocks, trailer = enc_blocks(data)
        assert fmode == mode, (fmode, mode)
        src = path
        if trailer:
            plain_trailer, crc = strip_crc(trailer)
            assert plain_trailer == b"", "unexpected bytes after the encrypted blocks"
            info["crc"] = {"present": True, "value": crc}
            tmpdir = tempfile.mkdtemp()
            src = Path(tmpdir) / "stripped.ckpt"
            src.write_bytes(data[:-17])
        plain = _decrypt(str(src), key, len(key), mode)
        if src != path:
            shutil.rmtree(src.parent, ignore_errors=True)
        assert plain, f"{fname}: MindSpore could not decrypt"
        plain = bytes(plain)
        info["format"] = "encrypted"
        info["encryption"] = {"mode": mode, "key_hex": key.hex(), "blocks": nblocks,
                              "plaintext_size": len(plain)}
        load_kw.update(dec_key=key, dec_mode=mode)
    else:
        plain, crc = strip_crc(data)
        if crc is not None:
            assert crc == binascii.crc32(plain), f"{fname}: bad CRC"
            info["crc"] = {"present": True, "value": crc}
    assert plain[:1] == b"\x0a"
    info["loads_in_mindspore"] = try_load(path, **load_kw) is not None
    info["entries"] = ckpt_entries(path, plain, written, load_kw)
    EXPECTED[fname] = info
    return info, plain


ST_DTYPES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8, "I8": 1, "I16": 2, "I32": 4, "I64": 8, "U8": 1,
             "U16": 2, "U32": 4, "U64": 8, "BOOL": 1, "C64": 8}


def record_safetensors(fname, written):
    path = OUT / fname
    data = path.read_bytes()
    (hlen,) = struct.unpack_from("<Q", data, 0)
    header = json.loads(data[8:8 + hlen])
    body = data[8 + hlen:]
    meta = header.pop("__metadata__", None)
    info = {"format": "safetensors", "encryption": None, "crc": None,
            "metadata": dict(sorted(meta.items())) if meta else meta}
    names = sorted(header)
    assert set(names) == set(written), (names, list(written))
    if meta and "crc_num" in meta:
        crc = 0
        for n in names:
            s, e = header[n]["data_offsets"]
            crc = binascii.crc32(n.encode(), crc)
            crc = binascii.crc32(body[s:e], crc)
        assert crc == int(meta["crc_num"]), "safetensors crc rule mismatch"
        info["crc"] = {"present": True, "value": crc}
    whole = try_load(path, format="safetensors")
    info["loads_in_mindspore"] = whole is not None
    entries = []
    for n in names:
        h = header[n]
        s, e = h["data_offsets"]
        fb = body[s:e]
        assert fb == written[n], f"{fname}:{n}: bytes differ from written"
        assert len(fb) == int(np.prod(h["shape"], dtype=np.int64)) * ST_DTYPES[h["dtype"]]
        ent = {"name": n, "dtype": h["dtype"], "shape": list(h["shape"])}
        loaded = try_load(path, n, format="safetensors")
        if loaded is not None:
            lb = _np_bytes(loaded)
            assert lb == fb, f"{fname}:{n}: loaded bytes differ"
            ent.update(value_hex=lb.hex(), source="load_checkpoint")
        else:
            ent.update(value_hex=fb.hex(), source="written")
        entries.append(ent)
    info["entries"] = entries
    EXPECTED[fname] = info
    return info


# ----------------------------------------------------------------------------------------------------
# Fixture builders
# ----------------------------------------------------------------------------------------------------

F_VALS = [[1.5, -2.25, 3.0], [0.0, 63.96875, -0.5]]
RAW8 = bytes.fromhex("38c044007eb0")
INT4_BYTES = bytes.fromhex("214365870f70")


def int_vals(np_t):
    info = np.iinfo(np_t)
    if info.min < 0:
        return np.array([[1, -2, 3], [info.max, info.min, 0]], dtype=np_t)
    return np.array([[1, 2, 3], [info.max, 128, 0]], dtype=np_t)


def dtype_fixtures():
    """One file per dtype, plus all of them in one file (dtypes_all.ckpt)."""
    f32 = np.array(F_VALS, np.float32)
    cases = [  # (file suffix, tag, tensor, expected bytes)
        ("f16", np.array(F_VALS, np.float16)),
        ("f32", f32),
        ("f64", np.array([[1.5, -2.25, 0.1], [0.0, 63.96875, -1e300]], np.float64)),
        ("bf16", "bf16"),
        ("i8", int_vals(np.int8)), ("i16", int_vals(np.int16)), ("i32", int_vals(np.int32)),
        ("i64", int_vals(np.int64)),
        ("u8", int_vals(np.uint8)), ("u16", int_vals(np.uint16)), ("u32", int_vals(np.uint32)),
        ("u64", int_vals(np.uint64)),
        ("bool", np.array([[True, False, True], [False, False, True]])),
        ("c64", (f32 + 1j * f32[::-1, ::-1]).astype(np.complex64)),
        ("c128", (f32.astype(np.float64) + 1j * np.array([[0.1, 2, 3], [4, 5, -6]])).astype(np.complex128)),
        ("int4", "int4"), ("f8e4m3", "f8e4m3"), ("f8e5m2", "f8e5m2"), ("hif8", "hif8"),
    ]
    all_obj, all_written = [], {}
    for suffix, val in cases:
        tag = f"t_{suffix}"
        if isinstance(val, np.ndarray):
            tensor = t(val)
            want = val.tobytes()
        elif val == "bf16":
            tensor = t(f32).astype(mstype.bfloat16)
            # bf16 = upper 16 bits of f32 after round-to-nearest-even (63.96875 -> 64.0)
            u = f32.view(np.uint32).astype(np.uint64)
            want = (((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)).tobytes()
        elif val == "int4":
            tensor = t(np.frombuffer(INT4_BYTES, np.int8).reshape(2, 3), mstype.qint4x2)
            want = INT4_BYTES
        else:
            dt = {"f8e4m3": mstype.float8_e4m3fn, "f8e5m2": mstype.float8_e5m2, "hif8": mstype.hifloat8}[val]
            tensor = raw_tensor(RAW8, (2, 3), dt)
            want = RAW8
        save(f"dtype_{suffix}.ckpt", [{"name": tag, "data": tensor}])
        record_ckpt(f"dtype_{suffix}.ckpt", {tag: want})
        all_obj.append({"name": tag, "data": tensor})
        all_written[tag] = want
    save("dtypes_all.ckpt", all_obj)
    record_ckpt("dtypes_all.ckpt", all_written)


def append_dict_fixture():
    gen = ms.Generator()
    gen.manual_seed(1234)
    params = [
        {"name": "w", "data": t(np.arange(6, dtype=np.float32).reshape(2, 3))},
        {"name": "scalar_f32", "data": t(np.float32(3.5))},
        {"name": "scalar_i32", "data": t(np.int32(7))},
        {"name": "one_elem", "data": t(np.array([9], np.int32))},
    ]
    app = {
        "py_int": 42,
        "py_neg_int": -5,
        "py_float": 0.25,
        "py_float_inexact": 0.001,
        "py_bool": False,
        "py_true": True,
        "py_str": "h\u00e9llo \u20ac \U0001F600 \u4e2d\u6587",
        "empty_str": "",
        "big_int": 2 ** 40,
        "ms_tensor": t(np.array([1.0, 2.0], np.float16)),
        "gen": gen,
    }
    written = {p["name"]: p["data"].asnumpy().tobytes() for p in params}
    written.update({
        "py_int": np.int64(42).tobytes(), "py_neg_int": np.int64(-5).tobytes(),
        "py_float": np.float32(0.25).tobytes(), "py_float_inexact": np.float32(0.001).tobytes(),
        "py_bool": b"\x00", "py_true": b"\x01",
        "py_str": app["py_str"], "empty_str": "",
        "big_int": np.int64(2 ** 40).tobytes(),
        "ms_tensor": np.array([1.0, 2.0], np.float16).tobytes(),
        "gen": struct.pack("<QQ", 1234, 0),  # Generator state = (seed, offset) as 16 UInt8
    })
    save("append_dict.ckpt", params, append_dict=app)
    record_ckpt("append_dict.ckpt", written)


class _Net(nn.Cell):
    def __init__(self):
        super().__init__()
        rs = np.random.RandomState(0)
        self.fc1 = nn.Dense(4, 3, weight_init=t(rs.randn(3, 4).astype(np.float32)),
                            bias_init=t(rs.randn(3).astype(np.float32)))
        self.bn = nn.BatchNorm1d(3)
        self.fc2 = nn.Dense(3, 2, weight_init=t(rs.randn(2, 3).astype(np.float32)),
                            bias_init=t(rs.randn(2).astype(np.float32)))

    def construct(self, x):
        return self.fc2(self.bn(self.fc1(x)))


def train_fixtures():
    from mindspore import dataset as ds
    from mindspore.train import CheckpointConfig, Model, ModelCheckpoint

    rs = np.random.RandomState(1)
    x = rs.randn(4, 4).astype(np.float32)
    y = np.array([0, 1, 1, 0], np.int32)
    for opt_name in ("Adam", "AdamWeightDecay", "Momentum", "SGD"):
        ms.set_seed(0)
        net = _Net()
        params = net.trainable_params()
        opt = {
            "Adam": lambda p: nn.Adam(p, learning_rate=0.01),
            "AdamWeightDecay": lambda p: nn.AdamWeightDecay(p, learning_rate=0.01, weight_decay=0.01),
            "Momentum": lambda p: nn.Momentum(p, learning_rate=0.01, momentum=0.9),
            "SGD": lambda p: nn.SGD(p, learning_rate=0.01),
        }[opt_name](params)
        loss = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
        model = Model(net, loss, opt)
        data = ds.NumpySlicesDataset({"x": x, "y": y}, shuffle=False).batch(2)
        tmp = tempfile.mkdtemp()
        cfg = CheckpointConfig(save_checkpoint_steps=2, keep_checkpoint_max=1,
                               append_info=["epoch_num", "step_num", {"note": "hello", "lr": 0.001, "flag": True}])
        cb = ModelCheckpoint(prefix=opt_name, directory=tmp, config=cfg)
        model.train(1, data, callbacks=[cb], dataset_sink_mode=False)
        ser._wait_async_thread_save_ckpt()  # pylint: disable=protected-access
        files = sorted(f for f in os.listdir(tmp) if f.endswith(".ckpt"))
        assert len(files) == 1, files
        fname = f"train_{opt_name}.ckpt"
        shutil.copyfile(os.path.join(tmp, files[0]), OUT / fname)
        shutil.rmtree(tmp, ignore_errors=True)
        fix_mode(OUT / fname)
        # Values come from the trained network itself; cross-check against the live objects.
        plain, _ = strip_crc((OUT / fname).read_bytes())
        written = {}
        for g in group_records(walk_ckpt(plain)):
            written[g[0]["tag"]] = (b"".join(r["content"] for r in g) if g[0]["type"] != "str"
                                    else b"".join(r["content"] for r in g).decode("utf-32-le").rstrip("\x00"))
        live = {p.name: p for p in list(net.get_parameters()) + list(opt.get_parameters())}
        for name, p in live.items():
            if name in written:
                assert p.asnumpy().tobytes() == written[name], f"{fname}:{name} differs from live value"
        assert written["note"] == "hello"
        assert written["epoch_num"] == np.int64(1).tobytes() and written["step_num"] == np.int64(2).tobytes()
        record_ckpt(fname, written)


def sliced_fixtures():
    a = np.arange(800, dtype=np.float32).reshape(2, 400)           # 3200 B: sliced
    u = np.array([[7, -8], [9, 10]], np.int32)                       # 16 B: never sliced
    h32 = (np.arange(1250, dtype=np.float32) * 0.25 - 100).reshape(5, 250)
    h = t(h32).astype(mstype.bfloat16)                               # 2500 B bf16: sliced
    v = (np.arange(700, dtype=np.float32) / 7).astype(np.float16)    # 1400 B f16, 1-D: sliced
    s = "x" * 100                                                    # 400 B str: never sliced
    h_bytes = h.asnumpy().tobytes()
    written = {"a": a.tobytes(), "u": u.tobytes(), "h": h_bytes, "v": v.tobytes(), "s": s}
    old = ser.SLICE_SIZE
    ser.SLICE_SIZE = 1  # KB
    try:
        obj = [{"name": "a", "data": t(a)}, {"name": "u", "data": t(u)}, {"name": "h", "data": h},
               {"name": "v", "data": t(v)}]
        save("sliced_tensor_path.ckpt", obj, append_dict={"s": s})
        save("sliced_numpy_path.ckpt", obj, append_dict={"s": s}, async_save="thread")
    finally:
        ser.SLICE_SIZE = old
    for fname in ("sliced_tensor_path.ckpt", "sliced_numpy_path.ckpt"):
        record_ckpt(fname, written)
    # Sanity: slicing really happened the documented way.
    tp = {e["name"]: e["records"] for e in EXPECTED["sliced_tensor_path.ckpt"]["entries"]}
    npp = {e["name"]: e["records"] for e in EXPECTED["sliced_numpy_path.ckpt"]["entries"]}
    # tensor path: fixed 1024-byte chunks; numpy path: np.array_split(arr, ceil(KB)) on axis 0
    assert tp == {"a": 4, "u": 1, "h": 3, "v": 2, "s": 1}, tp
    assert npp == {"a": 4, "u": 1, "h": 3, "v": 2, "s": 1}, npp
    recs = walk_ckpt((OUT / "sliced_tensor_path.ckpt").read_bytes())
    sizes = [(r["tag"], len(r["content"])) for r in recs]
    assert sizes == [("a", 1024)] * 3 + [("a", 128), ("u", 16), ("h", 1024), ("h", 1024), ("h", 452),
                                         ("v", 1024), ("v", 376), ("s", 400)], sizes
    recs = walk_ckpt((OUT / "sliced_numpy_path.ckpt").read_bytes())
    sizes = [(r["tag"], len(r["content"])) for r in recs]
    assert sizes == [("a", 1600)] * 2 + [("a", 0)] * 2 + [("u", 16), ("h", 1000), ("h", 1000), ("h", 500),
                                                           ("v", 700), ("v", 700), ("s", 400)], sizes


def crc_enc_fixtures():
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = np.array([1, 2], np.int32)
    obj = lambda: [{"name": "w", "data": t(w)}, {"name": "b", "data": t(b)}]  # noqa: E731
    written = {"w": w.tobytes(), "b": b.tobytes()}
    save("plain.ckpt", obj())
    _, plain = record_ckpt("plain.ckpt", written)
    save("crc.ckpt", obj(), crc_check=True)
    _, plain_crc = record_ckpt("crc.ckpt", written)
    assert plain_crc == plain
    for mode, key in (("AES-GCM", KEY16), ("AES-GCM", KEY24), ("AES-GCM", KEY32),
                      ("AES-CBC", KEY16), ("AES-CBC", KEY32), ("SM4-CBC", KEY16)):
        fname = f"enc_{mode}_k{len(key)}.ckpt"
        save(fname, obj(), enc_key=key, enc_mode=mode)
        _, p = record_ckpt(fname, written, enc=(mode, key))
        assert p == plain and EXPECTED[fname]["encryption"]["blocks"] == 1
    save("enc_gcm_plus_crc.ckpt", obj(), enc_key=KEY16, enc_mode="AES-GCM", crc_check=True)
    _, p = record_ckpt("enc_gcm_plus_crc.ckpt", written, enc=("AES-GCM", KEY16))
    assert p == plain and EXPECTED["enc_gcm_plus_crc.ckpt"]["crc"]["value"] == 0

    # Multi-block: ENCRYPT_BLOCK_SIZE (KB) is read at save time -> 1 KB plaintext blocks.
    big = (np.arange(16 * 33, dtype=np.float32) * 0.5 - 7).reshape(16, 33)  # 2112 B
    mb_written = {"big": big.tobytes(), "b": b.tobytes()}
    old = ser.ENCRYPT_BLOCK_SIZE
    ser.ENCRYPT_BLOCK_SIZE = 1
    try:
        for mode in ("AES-GCM", "AES-CBC", "SM4-CBC"):
            save(f"enc_{mode}_multiblock.ckpt", [{"name": "big", "data": t(big)}, {"name": "b", "data": t(b)}],
                 enc_key=KEY16, enc_mode=mode)
    finally:
        ser.ENCRYPT_BLOCK_SIZE = old
    save("enc_multiblock_plain.ckpt", [{"name": "big", "data": t(big)}, {"name": "b", "data": t(b)}])
    _, mb_plain = record_ckpt("enc_multiblock_plain.ckpt", mb_written)
    for mode in ("AES-GCM", "AES-CBC", "SM4-CBC"):
        fname = f"enc_{mode}_multiblock.ckpt"
        _, p = record_ckpt(fname, mb_written, enc=(mode, KEY16))
        assert p == mb_plain
        assert EXPECTED[fname]["encryption"]["blocks"] == 3, EXPECTED[fname]["encryption"]


def safetensors_fixtures():
    z = np.array([[1.5, -2.25, 3.0], [0.0, 62.5, -0.5]], np.float32)
    q = np.frombuffer(bytes.fromhex("2143"), np.int8).copy()

    def tensors():
        return [
            {"name": "z.f32", "data": t(z)},
            {"name": "a.f16", "data": t(z.astype(np.float16))},
            {"name": "m.i64", "data": t(np.array([0, 1, 2], np.int64))},
            {"name": "b.bool", "data": t(np.array([True, False]))},
            {"name": "s.scalar", "data": t(np.float32(2.0))},
            {"name": "q.int4", "data": t(q, mstype.qint4x2)},
        ]
    written = {"z.f32": z.tobytes(), "a.f16": z.astype(np.float16).tobytes(),
               "m.i64": np.array([0, 1, 2], np.int64).tobytes(), "b.bool": b"\x01\x00",
               "s.scalar": np.float32(2.0).tobytes(), "q.int4": q.tobytes()}
    save("direct.safetensors", tensors(), format="safetensors")
    record_safetensors("direct.safetensors", written)
    save("direct_crc.safetensors", tensors(), format="safetensors", crc_check=True)
    record_safetensors("direct_crc.safetensors", written)

    c = (z + 1j * z[::-1, ::-1]).astype(np.complex64)
    save("st_complex.safetensors", [{"name": "x", "data": t(c)}], format="safetensors")
    record_safetensors("st_complex.safetensors", {"x": c.tobytes()})

    bf = t(z).astype(mstype.bfloat16)
    save("st_bf16.safetensors", [{"name": "w.bf16", "data": bf}], format="safetensors")
    record_safetensors("st_bf16.safetensors", {"w.bf16": bf.asnumpy().tobytes()})

    # ckpt -> safetensors (-> ckpt) conversion
    save("conv_src.ckpt", tensors(), append_dict={"epoch_num": 1})
    conv_written = dict(written, epoch_num=np.int64(1).tobytes())
    record_ckpt("conv_src.ckpt", conv_written)
    tmp = Path(tempfile.mkdtemp())
    ms.ckpt_to_safetensors(str(OUT / "conv_src.ckpt"), save_path=str(tmp / "st"))
    outs = list((tmp / "st").rglob("*.safetensors"))
    assert len(outs) == 1, outs
    shutil.copyfile(outs[0], OUT / "conv_src.safetensors")
    fix_mode(OUT / "conv_src.safetensors")
    record_safetensors("conv_src.safetensors", conv_written)
    ms.safetensors_to_ckpt(str(OUT / "conv_src.safetensors"), save_path=str(tmp / "ck"))
    outs = list((tmp / "ck").rglob("*.ckpt"))
    assert len(outs) == 1, outs
    shutil.copyfile(outs[0], OUT / "conv_roundtrip.ckpt")
    fix_mode(OUT / "conv_roundtrip.ckpt")
    record_ckpt("conv_roundtrip.ckpt", conv_written)
    shutil.rmtree(tmp, ignore_errors=True)
    names = [e["name"] for e in EXPECTED["conv_roundtrip.ckpt"]["entries"]]
    assert names == sorted(names), names


def edge_fixtures():
    save("edge_empty.ckpt", [{"name": "e", "data": t(np.zeros((0, 3), np.float32))}])
    assert (OUT / "edge_empty.ckpt").stat().st_size == 0
    record_ckpt("edge_empty.ckpt", {})

    w = np.array([1.0, -1.0], np.float32)
    save("edge_empty_mixed.ckpt", [{"name": "e", "data": t(np.zeros((0,), np.float32))},
                                   {"name": "w", "data": t(w)}])
    record_ckpt("edge_empty_mixed.ckpt", {"w": w.tobytes()})

    # MapTensor: two records with the same tag, written like serialization._write_mapparameter.
    k1, v1, s1 = (np.array([1, 5], np.int32), np.arange(6, dtype=np.float32).reshape(2, 3),
                  np.zeros(2, np.int32))
    k2, v2, s2 = np.array([9], np.int32), np.array([[6, 7, 8]], np.float32), np.zeros(1, np.int32)
    write_raw("edge_maptensor.ckpt", [("emb_map", "maptensor", (k1, v1, s1)),
                                      ("emb_map", "maptensor", (k2, v2, s2))])
    record_ckpt("edge_maptensor.ckpt", {"emb_map": (np.concatenate([k1, k2]), np.concatenate([v1, v2]),
                                                    np.concatenate([s1, s2]))})

    # Old-style (2020) scalar: dims = [0] with 4 bytes of Float32 content, followed by a normal tensor.
    write_raw("edge_old_scalar.ckpt", [("old_scalar", "tensor", ([0], "Float32", struct.pack("<f", 2.5))),
                                       ("w", "tensor", ([2], "Float32", w.tobytes()))])
    record_ckpt("edge_old_scalar.ckpt", {"old_scalar": struct.pack("<f", 2.5), "w": w.tobytes()})

    # Old unsigned spellings Uint8..Uint64 (MindSpore 2.10 no longer knows them).
    old = []
    written = {}
    for bits in (8, 16, 32, 64):
        arr = int_vals(np.dtype(f"uint{bits}").type)
        old.append((f"u{bits}", "tensor", ([2, 3], f"Uint{bits}", arr.tobytes())))
        written[f"u{bits}"] = arr.tobytes()
    write_raw("edge_old_uint.ckpt", old)
    record_ckpt("edge_old_uint.ckpt", written)


def write_expected(path):
    """Compact but diff-friendly JSON: one line per file header and one line per entry."""
    def dumps(obj):
        return json.dumps(obj, ensure_ascii=False, separators=(", ", ": "))
    blocks = []
    for name in sorted(EXPECTED):
        info = dict(EXPECTED[name])
        entries = info.pop("entries")
        head = dumps(info)[:-1]
        if entries:
            body = ",\n".join("   " + dumps(e) for e in entries)
            blocks.append(f" {dumps(name)}: {head}, \"entries\": [\n{body}\n  ]}}")
        else:
            blocks.append(f" {dumps(name)}: {head}, \"entries\": []}}")
    text = "{\n" + ",\n".join(blocks) + "\n}\n"
    reparsed = json.loads(text)
    assert reparsed == {k: EXPECTED[k] for k in EXPECTED}
    path.write_text(text, encoding="utf-8")


def main():
    ms.set_context(mode=ms.PYNATIVE_MODE, device_target="CPU")
    OUT.mkdir(parents=True, exist_ok=True)
    for p in OUT.iterdir():
        if p.suffix in (".ckpt", ".safetensors", ".json", ".tmp"):
            os.chmod(p, 0o644)
            p.unlink()
    dtype_fixtures()
    append_dict_fixture()
    train_fixtures()
    sliced_fixtures()
    crc_enc_fixtures()
    safetensors_fixtures()
    edge_fixtures()

    on_disk = sorted(p.name for p in OUT.iterdir() if p.suffix in (".ckpt", ".safetensors"))
    assert on_disk == sorted(EXPECTED), set(on_disk) ^ set(EXPECTED)
    write_expected(OUT / "expected.json")
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {len(on_disk)} fixture files + expected.json to {OUT} ({total} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
