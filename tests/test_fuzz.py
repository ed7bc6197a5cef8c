"""Fuzzing the reader: random truncations, byte flips and splices of real fixtures.

Opening a damaged file and reading every tensor may succeed (the damage hit tensor bytes, or cut at a
record boundary) or raise msckpt.CheckpointError; nothing else. Each case must finish well under a second
(a hang guard, not a benchmark), and neither memory nor file descriptors may pile up.

Deterministic: a seeded numpy Generator per fixture. A failing case prints its seed, fixture and mutation.
"""

import gc
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from msckpt import CheckpointError, open_checkpoint  # noqa: E402

FIX = ROOT / "tests" / "fixtures" / "ckpt"
EXPECTED = json.loads((FIX / "expected.json").read_text(encoding="utf-8"))

# (fixture, cases): about 9000 cases in all (a few seconds)
TARGETS = [
    ("train_Adam.ckpt", 1200),                # many records, strings, scalars
    ("sliced_numpy_path.ckpt", 900),          # sliced tensors, empty slices, bf16
    ("sliced_tensor_path.ckpt", 750),
    ("append_dict.ckpt", 750),                # UTF-32 strings, old-style scalars
    ("crc.ckpt", 750),                        # CRC trailer
    ("edge_maptensor.ckpt", 600),             # MapTensor records
    ("dtypes_all.ckpt", 600),                 # every dtype
    ("direct_crc.safetensors", 900),          # safetensors header JSON + CRC metadata
    ("conv_src.safetensors", 450),
    ("enc_AES-CBC_multiblock.ckpt", 750),     # CBC: flipped ciphertext decrypts to garbage the walker must survive
    ("enc_AES-GCM_multiblock.ckpt", 450),
    ("enc_SM4-CBC_k16.ckpt", 450),
]
MAX_CASE_SECONDS = 1.0
MAX_RSS_GROWTH = 200 << 20


def mutate(data, rng):
    """One random damage of the bytes; returns (new bytes, description)."""
    data = bytearray(data)
    n = len(data)
    kind = int(rng.integers(0, 8))
    if kind == 0:                                           # truncate
        cut = int(rng.integers(0, n))
        return bytes(data[:cut]), f"truncate to {cut}"
    if kind == 1:                                           # flip a few bits
        pos = rng.integers(0, n, int(rng.integers(1, 4)))
        for p in pos:
            data[p] ^= 1 << int(rng.integers(0, 8))
        return bytes(data), f"bit flips at {pos.tolist()}"
    if kind == 2:                                           # random bytes
        pos = rng.integers(0, n, int(rng.integers(1, 9)))
        for p in pos:
            data[p] = int(rng.integers(0, 256))
        return bytes(data), f"random bytes at {pos.tolist()}"
    if kind == 3:                                           # varint-ish damage: a run of 0xff / 0x80
        p = int(rng.integers(0, n))
        run = int(rng.integers(1, 12))
        fill = int(rng.choice([0xFF, 0x80, 0x00, 0x7F]))
        data[p:p + run] = bytes([fill]) * run
        return bytes(data), f"{run} x {fill:#x} at {p}"
    if kind == 4:                                           # delete a span
        p = int(rng.integers(0, n))
        k = int(rng.integers(1, 16))
        del data[p:p + k]
        return bytes(data), f"delete {k} at {p}"
    if kind == 5:                                           # insert random bytes
        p = int(rng.integers(0, n + 1))
        k = int(rng.integers(1, 16))
        data[p:p] = rng.bytes(k)
        return bytes(data), f"insert {k} at {p}"
    if kind == 6:                                           # duplicate a span (repeated records / fields)
        p = int(rng.integers(0, n))
        k = int(rng.integers(1, 64))
        data[p:p] = data[p:p + k]
        return bytes(data), f"duplicate {k} at {p}"
    cut = int(rng.integers(1, n))                           # truncate, then flip
    data = data[:cut]
    p = int(rng.integers(0, cut))
    data[p] ^= 0xFF
    return bytes(data), f"truncate to {cut}, invert byte {p}"


def read_everything(ckpt):
    from gguf_out.report import describe, format_text   # the inspect code path too

    for t in ckpt:
        if t.kind == "str":
            t.string()
            t.value()
        elif t.kind == "tensor":
            arr = t.array()
            bytes(t.raw())
            if t.shape:
                t.rows(0, min(t.shape[0], 2))
            if t.n_elements == 1 and t.dtype.kind != "raw":
                t.value()
            assert arr.nbytes == t.nbytes
        else:
            with pytest.raises(TypeError):
                t.array()
    info = describe(ckpt, check_crc=False)
    format_text(info)
    json.dumps(info, default=str)


def open_kwargs(name):
    enc = EXPECTED[name]["encryption"]
    if not enc:
        return {}
    return {"dec_key": bytes.fromhex(enc["key_hex"]), "dec_mode": enc["mode"]}


def run_case(path, kwargs, verify_crc):
    """Open (verifying the CRC, or not) and read one damaged file; "ok", or the CheckpointError."""
    try:
        with open_checkpoint(path, verify_crc=verify_crc, **kwargs) as ckpt:
            read_everything(ckpt)
        return "ok"
    except CheckpointError as err:
        return err


def open_fds():
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None


@pytest.mark.parametrize("index,name,cases", [(i, n, c) for i, (n, c) in enumerate(TARGETS)],
                         ids=[n for n, _ in TARGETS])
def test_fuzz(tmp_path, index, name, cases):
    kwargs = open_kwargs(name)
    if kwargs:
        pytest.importorskip("cryptography")
    original = (FIX / name).read_bytes()
    path = tmp_path / name
    rng = np.random.default_rng(20240 + index)
    outcomes = {"ok": 0, "error": 0}
    slowest = (0.0, None)
    fds = open_fds()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024      # Linux: KiB
    for case in range(cases):
        data, what = mutate(original, rng)
        path.write_bytes(data)
        start = time.perf_counter()
        try:
            result = run_case(path, kwargs, bool(case % 2))
        except Exception as err:     # noqa: BLE001 -- anything else is a bug; say how to reproduce it
            pytest.fail(f"{name} case {case} ({what}; seed {20240 + index}): {type(err).__name__}: {err}")
        elapsed = time.perf_counter() - start
        if result == "ok":
            outcomes["ok"] += 1
        else:
            assert str(result).startswith(f"{path}: "), (what, str(result))
            assert "\n" not in str(result)
            outcomes["error"] += 1
        del result
        if elapsed > slowest[0]:
            slowest = (elapsed, what)
    gc.collect()
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert slowest[0] < MAX_CASE_SECONDS, f"slowest case took {slowest[0]:.3f} s: {slowest[1]}"
    assert rss_after - rss_before < MAX_RSS_GROWTH, f"max RSS grew by {(rss_after - rss_before) >> 20} MiB"
    if fds is not None:
        assert open_fds() == fds, "file descriptors leaked"
    # the mutations must actually exercise both outcomes
    assert outcomes["error"] > cases // 10, outcomes
    if not kwargs or EXPECTED[name]["encryption"]["mode"] != "AES-GCM":
        assert outcomes["ok"] > 0, outcomes
    print(f"{name}: {outcomes}, slowest {slowest[0] * 1000:.1f} ms ({slowest[1]})")


def test_fuzz_random_files(tmp_path):
    """Wholly random files of every sniffable kind: plain-looking, safetensors-looking, encrypted-looking."""
    rng = np.random.default_rng(7)
    path = tmp_path / "random.bin"
    heads = [b"\x0a", b"\x08", b"\xd8\x5e\x3a\x7f", b"\xd9\x5e\x3a\x7f", b"\xda\x5e\x3a\x7f", b""]
    key = bytes(16)
    worst = 0.0
    for case in range(300):
        head = heads[case % len(heads)]
        body = rng.bytes(int(rng.integers(0, 3000)))
        if case % 7 == 0:
            header = b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}' + body[:20]
            data = len(header).to_bytes(8, "little") + header + body
        else:
            data = head + body
        path.write_bytes(data)
        mode = {b"\xd9": "AES-CBC", b"\xda": "SM4-CBC"}.get(head[:1], "AES-GCM")
        start = time.perf_counter()
        try:
            result = run_case(path, {"dec_key": key, "dec_mode": mode}, False)
            assert result == "ok" or str(result).startswith(f"{path}: ")
        except Exception as err:     # noqa: BLE001
            pytest.fail(f"random case {case}: {type(err).__name__}: {err}")
        worst = max(worst, time.perf_counter() - start)
    assert worst < MAX_CASE_SECONDS
