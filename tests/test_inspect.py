"""`ms2gguf inspect`: the table (groups, records, values), --json totals, decryption options and CRC checks.

Run as a real subprocess (python -m gguf_out.cli), so exit status, stdout and stderr are what a user sees.
Expected group membership is derived here from expected.json names with the optimizer/training-scalar rules
of ckpt-format.md §6.4, not from msckpt.classify.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures" / "ckpt"
EXPECTED = json.loads((FIX / "expected.json").read_text(encoding="utf-8"))

TITLES = {"model weights": "weights", "optimizer state": "optimizer", "training scalars": "training",
          "run-time buffers": "buffers", "strings": "strings", "unsupported entries": "unsupported"}
OPTIMIZER_PREFIXES = ("moment1.", "moment2.", "adam_m.", "adam_v.", "moments.", "accum.", "stat.")
TRAINING = {"global_step", "learning_rate", "beta1_power", "beta2_power", "momentum", "epoch_num", "step_num",
            "lr", "flag"}   # lr/flag: 0-d append_info values


def inspect(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "gguf_out.cli", "inspect", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def ok(*args):
    result = inspect(*args)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


def one_line_error(result, path):
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"ms2gguf: error: {path}: ")
    return lines[0]


ROW = re.compile(r"^  (?P<name>\S+)\s+(?P<dtype>\S+)\s+(?P<shape>\S+)\s+(?P<bytes>[\d,]+)\s+(?P<records>\d+)"
                 r"(?:  = (?P<value>.*)|  \((?P<note>.*)\))?$")
GROUP = re.compile(r"^(?P<title>[a-z -]+): (?P<n>\d+) entries, (?P<params>[\d,]+) parameters, .*$")


def parse_table(text):
    """{group: {name: row dict}} from the text output, plus the header fields."""
    groups, header, current = {}, {}, None
    for line in text.splitlines():
        m = GROUP.match(line)
        if m and m.group("title") in TITLES:
            current = TITLES[m.group("title")]
            groups[current] = {"_count": int(m.group("n")), "_params": int(m.group("params").replace(",", ""))}
            continue
        if not line.strip():
            current = None
            continue
        if current is None:
            if ":" in line and not line.startswith(" "):
                key, _, value = line.partition(":")
                header[key] = value.strip()
            continue
        if line.startswith("  name "):
            continue
        m = ROW.match(line)
        assert m, f"unparsed row: {line!r}"
        groups[current][m.group("name")] = m.groupdict()
    return header, groups


def expected_group(name, entry):
    if entry["dtype"] == "str":
        return "strings"
    if entry["name"].startswith(OPTIMIZER_PREFIXES):
        return "optimizer"
    if entry["name"] in TRAINING:
        return "training"
    return "weights"


def shape_text(shape):
    return "x".join(map(str, shape)) if shape else "scalar"


# ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["train_Adam.ckpt", "train_AdamWeightDecay.ckpt", "train_Momentum.ckpt",
                                  "train_SGD.ckpt"])
def test_training_checkpoint_groups(name):
    header, groups = parse_table(ok(FIX / name))
    assert header["format"] == "ckpt" and header["crc"] == "none"
    assert header["size"].startswith(f"{(FIX / name).stat().st_size:,} bytes")
    entries = EXPECTED[name]["entries"]
    want = {}
    for e in entries:
        want.setdefault(expected_group(name, e), []).append(e)
    assert set(groups) == set(want) == {"weights", "optimizer", "training", "strings"}
    for group, members in want.items():
        rows = {k: v for k, v in groups[group].items() if not k.startswith("_")}
        assert list(rows) == [e["name"] for e in members], group     # file order within a group
        assert groups[group]["_count"] == len(members)
        for e in members:
            row = rows[e["name"]]
            assert row["dtype"] == e["dtype"] and row["shape"] == shape_text(e["shape"])
            assert int(row["records"]) == e["records"]
    weights = set(groups["weights"]) - {"_count", "_params"}
    assert {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "bn.gamma", "bn.beta", "bn.moving_mean",
            "bn.moving_variance"} == weights
    assert groups["weights"]["_params"] == 12 + 3 + 3 + 3 + 6 + 2 + 3 + 3
    # training scalars and strings show their values
    training = groups["training"]
    assert training["global_step"]["value"] == "2"
    assert training["epoch_num"]["value"] == "1" and training["step_num"]["value"] == "2"
    assert training["flag"]["value"] == "True"
    assert groups["strings"]["note"]["value"] == "'hello'"


@pytest.mark.parametrize("name", ["sliced_numpy_path.ckpt", "sliced_tensor_path.ckpt"])
def test_sliced_file_records_column(name):
    header, groups = parse_table(ok(FIX / name))
    rows = {k: v for g in groups.values() for k, v in g.items() if not k.startswith("_")}
    want = {e["name"]: e for e in EXPECTED[name]["entries"]}
    assert set(rows) == set(want)
    for tname, e in want.items():
        assert int(rows[tname]["records"]) == e["records"], tname
        assert rows[tname]["shape"] == shape_text(e["shape"])
    assert [int(rows[n]["records"]) for n in ("a", "u", "h", "v", "s")] == [4, 1, 3, 2, 1]
    assert rows["a"]["bytes"] == "3,200" and rows["h"]["bytes"] == "2,500"
    assert rows["h"]["note"] == "raw bfloat16 bits"
    assert rows["s"]["value"] == repr("x" * 100)


@pytest.mark.parametrize("name", ["enc_AES-GCM_k32.ckpt", "enc_AES-CBC_multiblock.ckpt", "enc_SM4-CBC_k16.ckpt"])
def test_encrypted_with_key(name):
    enc = EXPECTED[name]["encryption"]
    header, groups = parse_table(ok(FIX / name, "--dec-key", enc["key_hex"], "--dec-mode", enc["mode"]))
    assert header["format"] == f"ckpt, encrypted ({enc['mode']})"
    assert list(k for k in groups["weights"] if not k.startswith("_")) == [e["name"] for e in EXPECTED[name]["entries"]]


def test_encrypted_size_line_is_the_file_size():
    """Library bug (see tests/test_reader.py::test_file_size_is_the_size_on_disk): inspect prints the decrypted
    plaintext size (96 bytes) as the size of enc_gcm_plus_crc.ckpt (161 bytes)."""
    enc = EXPECTED["enc_gcm_plus_crc.ckpt"]["encryption"]
    header, _ = parse_table(ok(FIX / "enc_gcm_plus_crc.ckpt", "--dec-key", enc["key_hex"]))
    assert header["size"].startswith(f"{(FIX / 'enc_gcm_plus_crc.ckpt').stat().st_size:,} bytes")


def test_encrypted_without_key_or_with_a_wrong_one():
    path = FIX / "enc_SM4-CBC_k16.ckpt"
    line = one_line_error(inspect(path), path)
    assert "SM4-CBC" in line and "--dec-key" in line
    line = one_line_error(inspect(path, "--dec-key", "00" * 16, "--dec-mode", "SM4-CBC"), path)
    assert "SM4-CBC" in line
    line = one_line_error(inspect(path, "--dec-key", "30313233343536373839616263646566"), path)
    assert "--dec-mode is AES-GCM" in line


@pytest.mark.parametrize("name", ["train_Adam.ckpt", "sliced_numpy_path.ckpt", "append_dict.ckpt", "dtypes_all.ckpt",
                                  "direct_crc.safetensors", "edge_maptensor.ckpt", "edge_empty.ckpt",
                                  "enc_AES-GCM_multiblock.ckpt"])
def test_json_totals(name):
    args = [FIX / name, "--json"]
    if EXPECTED[name]["encryption"]:
        args += ["--dec-key", EXPECTED[name]["encryption"]["key_hex"]]
    info = json.loads(ok(*args))
    entries = info["entries"]
    assert info["tensors"] == len(entries)
    assert info["parameters"] == sum(e["parameters"] for e in entries)
    assert info["bytes"] == sum(e["bytes"] for e in entries)
    for key, bucket_of in (("per_dtype", lambda e: e["dtype"]), ("per_group", lambda e: e["group"])):
        buckets = {}
        for e in entries:
            b = buckets.setdefault(bucket_of(e), {"tensors": 0, "parameters": 0, "bytes": 0})
            b["tensors"] += 1
            b["parameters"] += e["parameters"]
            b["bytes"] += e["bytes"]
        assert info[key] == buckets, key
    assert sum(b["tensors"] for b in info["per_group"].values()) == info["tensors"]
    assert sum(b["bytes"] for b in info["per_dtype"].values()) == info["bytes"]
    # entries agree with what MindSpore wrote
    want = EXPECTED[name]["entries"]
    if name == "edge_maptensor.ckpt":
        assert [(e["name"], e["kind"], e["group"], e["records"]) for e in entries] == \
            [("emb_map", "maptensor", "unsupported", 2)]
        assert [p["dtype"] for p in entries[0]["parts"]] == ["int32", "float32", "int32"] * 2
        return
    key = (lambda e: e["name"]) if EXPECTED[name]["format"] == "safetensors" else None
    got = sorted(entries, key=key) if key else entries
    assert [e["name"] for e in got] == [w["name"] for w in want]
    for e, w in zip(got, want):
        assert e["shape"] == w["shape"]
        assert e["records"] == w.get("records", 1)
        assert e["bytes"] == (len(bytes.fromhex(w["value_hex"])) if "value_hex" in w else e["bytes"])
        if "value_str" in w:
            assert e["kind"] == "str" and e["value"] == w["value_str"] and e["group"] == "strings"
    assert info["format"] == ("ckpt" if EXPECTED[name]["format"] == "encrypted" else EXPECTED[name]["format"])


def test_json_and_text_agree():
    info = json.loads(ok(FIX / "train_Momentum.ckpt", "--json"))
    _, groups = parse_table(ok(FIX / "train_Momentum.ckpt"))
    for e in info["entries"]:
        assert e["name"] in groups[e["group"]]
    for group, stats in info["per_group"].items():
        assert groups[group]["_count"] == stats["tensors"] and groups[group]["_params"] == stats["parameters"]


@pytest.mark.parametrize("name", ["crc.ckpt", "direct_crc.safetensors"])
def test_crc_valid(name):
    stored = EXPECTED[name]["crc"]["value"]
    header, _ = parse_table(ok(FIX / name))
    assert header["crc"] == f"present, valid ({stored})"
    info = json.loads(ok(FIX / name, "--json"))
    assert info["crc"] == {"present": True, "stored": stored, "valid": True, "computed": stored}
    header, _ = parse_table(ok(FIX / name, "--no-crc"))
    assert header["crc"] == f"present ({stored}), not checked"


@pytest.mark.parametrize("name", ["crc.ckpt", "direct_crc.safetensors"])
def test_crc_mismatch_exits_1(tmp_path, name):
    stored = EXPECTED[name]["crc"]["value"]
    data = bytearray((FIX / name).read_bytes())
    trailer = 17 if name.endswith(".ckpt") else 0
    data[-trailer - 3] ^= 0x10  # a byte of the last tensor: the structure stays valid, the content changes
    path = tmp_path / name
    path.write_bytes(bytes(data))
    result = inspect(path)
    line = one_line_error(result, path)
    assert "CRC mismatch" in line and str(stored) in line
    assert "MISMATCH" in result.stdout          # the table is still printed
    computed = json.loads(inspect(path, "--json").stdout)["crc"]["computed"]
    assert computed != stored and str(computed) in line
    # --no-crc skips the check: exit 0
    header, _ = parse_table(ok(path, "--no-crc"))
    assert "not checked" in header["crc"]


def test_no_crc_for_plain_file():
    header, _ = parse_table(ok(FIX / "plain.ckpt"))
    assert header["crc"] == "none"


def test_empty_checkpoint():
    out = ok(FIX / "edge_empty.ckpt")
    assert "format:     empty" in out and "no tensors" in out
