"""Split GGUF sets (``--split-max-size``, ``--split-max-tensors``), ``--split-part K``, ``ms2gguf check`` of a set,
the Modelfile of a set, and the Python API (``from gguf_out import convert``).

The plan and the bytes are compared with gguf-py's own split writer; llama.cpp loads the set from its first file.
"""

import json
import os
import stat
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import LLAMA, TOKENIZER, convert, llama_logits

import gguf
from gguf_out import check, split

GQA = LLAMA / "gqa_fused" / "model.ckpt"
K256 = LLAMA / "k256" / "model.ckpt"
REPO = Path(__file__).resolve().parent.parent


def _names(out, count):
    return [Path(p) for p in split.names(out, count)]


def _unsplit(tmp_path, ckpt=GQA, *options, name="whole.gguf"):
    out = tmp_path / name
    assert convert(ckpt, out, *options) == 0
    return out


# --- the plan --------------------------------------------------------------------------------------------------

def _gguf_py_plan(reader, max_size=0, max_tensors=0):
    """gguf-py's split plan for the tensors of ``reader``: [[names] per split]."""
    writer = gguf.GGUFWriter(None, "llama", split_max_tensors=max_tensors, split_max_size=max_size)
    for t in reader.tensors:
        writer.add_tensor_info(t.name, list(reversed(t.shape.tolist())), np.dtype(np.uint8), int(t.n_bytes),
                               raw_dtype=t.tensor_type)
    return [list(group) for group in writer.tensors]


@pytest.mark.parametrize("max_size,max_tensors", [(0, 8), (0, 1), (0, 100), (60_000, 0), (32_768, 0),
                                                   (1, 0), (100_000, 5)])
def test_plan_is_gguf_pys(tmp_path, max_size, max_tensors):
    reader = gguf.GGUFReader(_unsplit(tmp_path))
    ours = split.plan([int(t.n_bytes) for t in reader.tensors], max_size, max_tensors)
    theirs = _gguf_py_plan(reader, max_size, max_tensors)
    assert [[t.name for t in reader.tensors[a:b]] for a, b in ours] == theirs
    assert len(theirs) > 1 or (max_tensors == 100)


def test_sizes_are_decimal_as_gguf_split():
    assert split.parse_size("500M") == 500_000_000
    assert split.parse_size("50G") == 50_000_000_000
    assert split.parse_size("2k") == 2000 and split.parse_size("123") == 123
    for bad in ("0", "1.5G", "G", "10X", ""):
        with pytest.raises(ValueError):
            split.parse_size(bad)


def test_bad_split_options_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        convert(GQA, tmp_path / "m.gguf", "--split-max-size", "lots")
    assert "--split-max-size: 'lots' is not a size such as 500M" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        convert(GQA, tmp_path / "m.gguf", "--split-part", "0")
    assert "--split-part: '0' is not a whole number of at least 1" in capsys.readouterr().err


# --- the files -------------------------------------------------------------------------------------------------

def _gguf_py_split(source, out, max_tensors):
    """The set gguf-py writes from the tensors and metadata of the GGUF ``source``."""
    reader = gguf.GGUFReader(source)
    writer = gguf.GGUFWriter(out, gguf_value(reader, "general.architecture"), split_max_tensors=max_tensors)
    writer.kv_data[0].clear()           # the metadata exactly as the source has it, in its order
    for field in reader.fields.values():
        if field.name.startswith("GGUF."):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.kv_data[0][field.name] = gguf.GGUFValue(field.contents(), vtype, sub)
    for t in reader.tensors:
        writer.add_tensor(t.name, np.asarray(t.data), raw_shape=list(reversed(t.shape.tolist())) if t.tensor_type
                          in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16) else None,
                          raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def gguf_value(reader, key):
    return reader.fields[key].contents()


def test_split_set_is_byte_identical_to_gguf_pys(tmp_path):
    whole = _unsplit(tmp_path)
    out = tmp_path / "ours" / "m.gguf"
    out.parent.mkdir()
    assert convert(GQA, out, "--split-max-tensors", "8") == 0
    ours = _names(out, 3)
    assert sorted(out.parent.iterdir()) == ours
    theirs_dir = tmp_path / "theirs"
    theirs_dir.mkdir()
    _gguf_py_split(whole, theirs_dir / "m.gguf", 8)
    theirs = sorted(theirs_dir.iterdir())
    assert [p.name for p in theirs] == [p.name for p in ours]
    for a, b in zip(ours, theirs):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_split_keys_types_and_metadata_placement(tmp_path):
    out = tmp_path / "m.gguf"
    assert convert(GQA, out, "--split-max-tensors", "8") == 0
    whole = gguf.GGUFReader(_unsplit(tmp_path))
    readers = [gguf.GGUFReader(p) for p in _names(out, 3)]
    split_keys = ["split.no", "split.count", "split.tensors.count"]
    for k, r in enumerate(readers):
        fields = {f.name: f for f in r.fields.values() if not f.name.startswith("GGUF.")}
        assert [fields[key].types[0] for key in split_keys] == [gguf.GGUFValueType.UINT16,
                                                               gguf.GGUFValueType.UINT16, gguf.GGUFValueType.INT32]
        assert [fields[key].contents() for key in split_keys] == [k, 3, 21]
        if k == 0:      # all metadata in the first split, then the split keys
            assert list(fields)[:-3] == [f for f in whole.fields if not f.startswith("GGUF.")]
            assert list(fields)[-3:] == split_keys
        else:
            assert list(fields) == split_keys
    # the tensors, in plan order, with the unsplit file's bytes
    tensors = [t for r in readers for t in r.tensors]
    assert [t.name for t in tensors] == [t.name for t in whole.tensors]
    for a, b in zip(tensors, whole.tensors):
        assert a.tensor_type == b.tensor_type and np.array_equal(a.data, b.data), a.name
    assert [len(r.tensors) for r in readers] == [8, 8, 5]


def test_one_split_plan_writes_out_unchanged(tmp_path, capsys):
    whole = _unsplit(tmp_path)
    out = tmp_path / "m.gguf"
    from gguf_out.cli import main
    assert main([str(GQA), "llama2", str(out), "--tokenizer", str(TOKENIZER), "--split-max-size", "50G",
                 "--split-max-tensors", "1000"]) == 0
    assert f"note: the split plan of {out} has one file: it is written as one GGUF, without split keys" in \
        capsys.readouterr().err
    assert out.read_bytes() == whole.read_bytes()
    assert "split.count" not in gguf.GGUFReader(out).fields


def test_split_set_loads_in_llama_cpp_with_the_unsplit_logits(tmp_path):
    ids = json.loads((LLAMA / "gqa_fused" / "tokens.json").read_text())["ids"]
    out = tmp_path / "m.gguf"
    assert convert(GQA, out, "--split-max-size", "60K") == 0
    files = sorted(p for p in tmp_path.iterdir() if p.name.startswith("m-"))
    assert len(files) == 7
    logits = llama_logits(files[0], ids)
    assert np.array_equal(logits, llama_logits(_unsplit(tmp_path), ids))
    ref = np.load(LLAMA / "gqa_fused" / "logits.npy")
    assert float(abs(logits - ref).max() / abs(ref).max()) < 3e-3


def test_several_outtypes_each_have_their_own_count(tmp_path, capsys):
    out = tmp_path / "m-{ftype}.gguf"
    assert convert(GQA, out, "--outtype", "f32,q8_0", "--split-max-size", "100K", "--dry-run") == 0
    printed = capsys.readouterr().out
    assert "split  f32: 7 files" in printed and "split  q8_0: 2 files" in printed
    assert not list(tmp_path.iterdir())
    assert convert(GQA, out, "--outtype", "f32,q8_0", "--split-max-size", "100K") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [p.name for p in _names(tmp_path / "m-F32.gguf", 7)] + [p.name for p in _names(tmp_path / "m-Q8_0.gguf", 2)])
    for first in ("m-F32-00001-of-00007.gguf", "m-Q8_0-00001-of-00002.gguf"):
        assert not check.check_file(tmp_path / first).errors


def test_existing_split_needs_force(tmp_path, capsys):
    out = tmp_path / "m.gguf"
    assert convert(GQA, out, "--split-max-tensors", "8") == 0
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    assert convert(GQA, out, "--split-max-tensors", "8", "--outtype", "f32") == 1
    assert "m-00001-of-00003.gguf: already exists (use --force to overwrite)" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert convert(GQA, out, "--split-max-tensors", "8", "--outtype", "f32", "--force") == 0
    assert gguf.GGUFReader(_names(out, 3)[0]).tensors[0].tensor_type == gguf.GGMLQuantizationType.F32


def test_a_set_is_published_all_or_nothing(tmp_path, monkeypatch, capsys):
    """A file that cannot be published half way through the set takes back the files already published."""
    from gguf_out import publish

    real, calls = publish.Output._publish, []

    def second_fails(self):
        calls.append(self.path)
        if len(calls) == 2:
            raise publish.ConvertError(f"{self.path}: cannot put the new file in place (Input/output error)")
        return real(self)

    monkeypatch.setattr(publish.Output, "_publish", second_fails)
    assert convert(GQA, tmp_path / "m.gguf", "--split-max-tensors", "8") == 1
    err = capsys.readouterr().err
    assert "m-00002-of-00003.gguf: cannot put the new file in place" in err
    assert "nothing was written (" in err and "m-00003-of-00003.gguf taken back)" in err
    assert len(calls) == 2 and calls[0].name == "m-00003-of-00003.gguf"     # the first split goes last
    assert list(tmp_path.iterdir()) == []


def test_a_set_failing_its_check_is_not_written(tmp_path, monkeypatch, capsys):
    real = check.check_set

    def broken(paths, maps=None, first=None):
        report = real(paths, maps, first)
        report.error("test", "injected problem")
        return report

    monkeypatch.setattr(check, "check_set", broken)
    assert convert(GQA, tmp_path / "m.gguf", "--split-max-tensors", "8") == 1
    assert "fails its check, so it was not written: injected problem" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# --- --split-part ----------------------------------------------------------------------------------------------

def test_parts_in_reverse_order_reproduce_the_full_run(tmp_path):
    full = tmp_path / "full"
    parts = tmp_path / "parts"
    full.mkdir()
    parts.mkdir()
    options = ("--outtype", "q4_k_m,f16", "--split-max-size", "400K")
    assert convert(K256, full / "m-{ftype}.gguf", *options) == 0
    counts = {t: len(list(full.glob(f"m-{t}-*"))) for t in ("Q4_K_M", "F16")}
    assert counts["F16"] > counts["Q4_K_M"] > 1
    for k in range(counts["F16"], 0, -1):
        assert convert(K256, parts / "m-{ftype}.gguf", *options, "--split-part", k) == 0
    assert sorted(p.name for p in parts.iterdir()) == sorted(p.name for p in full.iterdir())
    for p in full.iterdir():
        assert (parts / p.name).read_bytes() == p.read_bytes(), p.name


def test_a_part_reads_only_its_tensors(tmp_path, monkeypatch):
    from gguf_out import conversion

    seen = []
    real = conversion._write_tensor

    def spy(writers, out, bar, threads, *rest):
        seen.append(out.name)
        real(writers, out, bar, threads, *rest)

    monkeypatch.setattr(conversion, "_write_tensor", spy)
    assert convert(GQA, tmp_path / "m.gguf", "--split-max-tensors", "8", "--split-part", "2") == 0
    assert [p.name for p in tmp_path.iterdir()] == ["m-00002-of-00003.gguf"]
    assert seen == [t.name for t in gguf.GGUFReader(tmp_path / "m-00002-of-00003.gguf").tensors]
    assert len(seen) == 8


def test_a_type_without_part_k_says_so(tmp_path, capsys):
    out = tmp_path / "m-{ftype}.gguf"
    options = ("--outtype", "f32,q8_0", "--split-max-size", "100K")
    assert convert(GQA, out, *options, "--split-part", "3") == 0
    err = capsys.readouterr().err
    assert f"q8_0 has 2 splits: no split 3 to write for {tmp_path}/m-Q8_0.gguf" in err
    assert [p.name for p in tmp_path.iterdir()] == ["m-F32-00003-of-00007.gguf"]
    assert convert(GQA, out, *options, "--split-part", "8") == 1
    assert "--split-part 8: the split plan has fewer files (f32 7, q8_0 2)" in capsys.readouterr().err
    assert convert(GQA, tmp_path / "one.gguf", "--split-part", "1") == 0     # a one-split plan: the whole file
    assert "split.count" not in gguf.GGUFReader(tmp_path / "one.gguf").fields


def test_a_lone_part_passes_the_part_check_and_the_set_check_names_the_missing(tmp_path):
    out = tmp_path / "m.gguf"
    assert convert(GQA, out, "--split-max-tensors", "8", "--split-part", "1") == 0
    report = check.check_file(_names(out, 3)[0])
    assert [p.text for p in report.errors] == ["split 2 of 3 (m-00002-of-00003.gguf) is missing",
                                               "split 3 of 3 (m-00003-of-00003.gguf) is missing"]


# --- ms2gguf check of a set -----------------------------------------------------------------------------------

def _check_cli(*paths):
    import subprocess
    run = subprocess.run([sys.executable, "-m", "gguf_out.cli", "check", *map(str, paths)], capture_output=True,
                         text=True, cwd=REPO)
    return run.returncode, run.stdout


def test_check_validates_the_whole_set(tmp_path):
    out = tmp_path / "m.gguf"
    assert convert(GQA, out, "--split-max-tensors", "8") == 0
    first, second, third = _names(out, 3)
    status, printed = _check_cli(first)
    assert status == 0 and printed == (f"{first}: ok (21 tensors, llama, 2 layers, 480 tokens, MOSTLY_F16, "
                                       "294.3 KiB, 3 files)\n")
    status, printed = _check_cli(second)
    assert status == 1 and printed == (f"{second}: error: split 2 of 3: give the first file "
                                       "(m-00001-of-00003.gguf); it is checked with the whole set\n")
    status, printed = _check_cli(third, second, first)      # as 'ms2gguf check *.gguf' would
    assert status == 0 and printed.splitlines() == [
        f"{third}: split of m-00001-of-00003.gguf, checked with it",
        f"{second}: split of m-00001-of-00003.gguf, checked with it", f"{first}: ok (21 tensors, llama, 2 layers, "
        "480 tokens, MOSTLY_F16, 294.3 KiB, 3 files)"]
    third.unlink()
    status, printed = _check_cli(first)
    assert status == 1 and "error: split 3 of 3 (m-00003-of-00003.gguf) is missing" in printed


def _patch_i32_after(path, key, value):
    """Overwrite the int32 value of metadata ``key`` in place."""
    data = bytearray(path.read_bytes())
    raw = key.encode()
    at = data.index(struct.pack("<Q", len(raw)) + raw) + 8 + len(raw)
    assert struct.unpack_from("<I", data, at)[0] == gguf.GGUFValueType.INT32
    struct.pack_into("<i", data, at + 4, value)
    path.write_bytes(bytes(data))


def test_check_finds_mismatched_counts_and_foreign_splits(tmp_path):
    out = tmp_path / "m.gguf"
    assert convert(GQA, out, "--split-max-tensors", "8") == 0
    first, second, third = _names(out, 3)
    assert not check.check_file(first).errors
    _patch_i32_after(second, "split.tensors.count", 20)
    texts = [p.text for p in check.check_file(first).errors]
    assert texts == ["split 2 of 3 (m-00002-of-00003.gguf): split.tensors.count 20; the first split says 21"]
    _patch_i32_after(second, "split.tensors.count", 21)
    _patch_i32_after(first, "split.tensors.count", 22)
    texts = [p.text for p in check.check_file(first).errors]
    assert texts == [f"split {k} of 3 (m-0000{k}-of-00003.gguf): split.tensors.count 21; the first split says 22"
                     for k in (2, 3)]
    for path in (second, third):
        _patch_i32_after(path, "split.tensors.count", 22)
    texts = [p.text for p in check.check_file(first).errors]
    assert texts == ["split.tensors.count is 22 but the 3 files hold 21 tensors (llama.cpp: corrupted model)"]
    for path in (first, second, third):
        _patch_i32_after(path, "split.tensors.count", 21)
    _patch_i32_after(first, "split.tensors.count", 21)
    # a split of another plan of the same model, renamed into the set: wrong split.no and its tensors repeat
    other = tmp_path / "other"
    other.mkdir()
    assert convert(GQA, other / "m.gguf", "--split-max-tensors", "4") == 0
    third.write_bytes(_names(other / "m.gguf", 6)[1].read_bytes())
    texts = [p.text for p in check.check_file(first).errors]
    assert texts[0] == ("split 3 of 3 (m-00003-of-00003.gguf): split.no 1 and split.count 6; expected 2 and 3")


def test_check_refuses_a_renamed_first_split(tmp_path):
    out = tmp_path / "m.gguf"
    assert convert(GQA, out, "--split-max-tensors", "8") == 0
    renamed = tmp_path / "model.gguf"
    _names(out, 3)[0].rename(renamed)
    assert [p.text for p in check.check_file(renamed).errors] == [
        "split 1 of 3, but the name does not end in -00001-of-00003.gguf: llama.cpp finds the other splits by name"]


# --- Modelfile and ollama create -------------------------------------------------------------------------------

STUB_OLLAMA = """#!{python}
# stub ollama: records the FROM lines of the Modelfile it is given and checks the set they name
import json, os, sys
sys.path.insert(0, {repo!r})
from gguf_out.check import check_file
modelfile = os.path.join(os.getcwd(), sys.argv[4])
froms = [l[5:].strip() for l in open(modelfile).read().splitlines() if l.startswith("FROM ")]
paths = [os.path.join(os.path.dirname(modelfile), f) for f in froms]
problems = [p + ": missing" for p in paths if not os.path.isfile(p)]
problems += [p.text for p in check_file(paths[0]).errors] if not problems else []
json.dump({{"args": sys.argv[1:], "froms": froms, "problems": problems}}, open(os.environ["STUB_RECORD"], "w"))
sys.exit(65 if problems else 0)
"""


@pytest.fixture
def stub_ollama(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "ollama"
    exe.write_text(STUB_OLLAMA.format(python=sys.executable, repo=str(REPO)))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STUB_RECORD", str(tmp_path / "record.json"))
    return tmp_path / "record.json"


def _froms(modelfile):
    return [line[5:] for line in modelfile.read_text().splitlines() if line.startswith("FROM ")]


def test_modelfile_of_a_set_names_every_file(tmp_path, capsys):
    out = tmp_path / "out" / "m.gguf"
    out.parent.mkdir()
    assert convert(GQA, out, "--split-max-tensors", "8", "--modelfile", quiet=False) == 0     # -q: no warnings
    assert _froms(out.parent / "m.Modelfile") == [f"./{p.name}" for p in _names(out, 3)]
    err = capsys.readouterr().err
    assert "older Ollama versions (before its llama-server engine, 2026-05) cannot import split sets" in err
    size = sum(p.stat().st_size for p in _names(out, 3))
    assert f"needs about 0.0 GB ({size:,} bytes) of free disk" in err


def test_ollama_create_is_given_the_whole_set(tmp_path, stub_ollama):
    out = tmp_path / "out" / "m.gguf"
    out.parent.mkdir()
    assert convert(GQA, out, "--split-max-tensors", "8", "--ollama", "tiny") == 0
    record = json.loads(stub_ollama.read_text())
    assert record["args"] == ["create", "tiny", "-f", str(out.parent / "m.Modelfile")]
    assert record["froms"] == [f"./{p.name}" for p in _names(out, 3)] and record["problems"] == []


def test_stub_ollama_rejects_an_incomplete_set(tmp_path, stub_ollama):
    """Negative control: the stub really checks the set."""
    from gguf_out import modelfile

    out = tmp_path / "m.gguf"
    assert convert(GQA, out, "--split-max-tensors", "8", "--modelfile") == 0
    _names(out, 3)[2].unlink()
    assert modelfile.run_ollama("tiny", tmp_path / "m.Modelfile") == 65
    assert json.loads(stub_ollama.read_text())["problems"] == [f"{tmp_path}/./m-00003-of-00003.gguf: missing"]


def test_split_parts_with_modelfile(tmp_path, capsys):
    """Part 1 writes the Modelfile naming the whole set; the other parts do not touch it."""
    out = tmp_path / "m.gguf"
    options = ("--split-max-tensors", "8", "--modelfile")
    assert convert(GQA, out, *options, "--split-part", "3") == 0
    assert not (tmp_path / "m.Modelfile").exists()
    assert convert(GQA, out, *options, "--split-part", "1") == 0
    assert _froms(tmp_path / "m.Modelfile") == [f"./{p.name}" for p in _names(out, 3)]
    text = (tmp_path / "m.Modelfile").read_text()
    assert convert(GQA, out, *options, "--split-part", "2") == 0      # an existing Modelfile is no conflict
    assert (tmp_path / "m.Modelfile").read_text() == text
    assert convert(GQA, out, *options, "--split-part", "1") == 1      # part 1 again: its file and Modelfile exist
    assert "already exists" in capsys.readouterr().err
    whole = tmp_path / "whole"
    whole.mkdir()
    assert convert(GQA, whole / "m.gguf", *options) == 0
    assert (whole / "m.Modelfile").read_text() == text
    assert not check.check_file(_names(out, 3)[0]).errors


def test_ollama_with_split_part_is_refused(tmp_path, capsys):
    assert convert(GQA, tmp_path / "m.gguf", "--split-max-tensors", "8", "--split-part", "1", "--ollama", "x") == 1
    assert "--ollama needs the whole split set" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# --- the Python API --------------------------------------------------------------------------------------------

def test_python_api_after_a_cli_run_in_the_same_process(tmp_path):
    cli_out = _unsplit(tmp_path, GQA, "--outtype", "q8_0", name="cli.gguf")     # the CLI first, then the API
    import gguf_out
    from gguf_out import ConvertError, convert as api_convert

    assert callable(gguf_out.convert) and gguf_out.ConvertError is ConvertError
    result = api_convert(str(GQA), tmp_path / "api.gguf", "llama2", outtype="q8_0", tokenizer=TOKENIZER)
    assert (tmp_path / "api.gguf").read_bytes() == cli_out.read_bytes()
    assert result.written == [tmp_path / "api.gguf"] and result.outputs == {"q8_0": [tmp_path / "api.gguf"]}
    assert result.tensors == 21 and result.bytes == cli_out.stat().st_size and result.seconds > 0
    assert result.skipped == []
    result = api_convert(GQA, tmp_path / "m-{ftype}.gguf", outtype=["f16", "q8_0"], tokenizer=TOKENIZER,
                         split_max_tensors=8, modelfile=True, threads=1)
    assert result.outputs["f16"] == _names(tmp_path / "m-F16.gguf", 3)
    assert len(result.written) == 6 and len(result.modelfiles) == 2


def test_python_api_errors(tmp_path):
    from msckpt import CheckpointError

    from gguf_out import ConvertError, convert as api_convert

    with pytest.raises(ConvertError, match="unknown option 'colour'"):
        api_convert(GQA, tmp_path / "m.gguf", "llama2", colour="red")
    with pytest.raises(ConvertError, match="argument --outtype: unknown type 'q9'"):
        api_convert(GQA, tmp_path / "m.gguf", "llama2", outtype="q9")
    with pytest.raises(ConvertError, match="option 'force' is a flag"):
        api_convert(GQA, tmp_path / "m.gguf", "llama2", force="yes")
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(GQA.read_bytes()[:1000])
    (tmp_path / "config.yaml").write_bytes((LLAMA / "gqa_fused" / "config.yaml").read_bytes())
    with pytest.raises(ConvertError) as caught:
        api_convert(broken, tmp_path / "m.gguf", "llama2", tokenizer=TOKENIZER)
    assert isinstance(caught.value.__cause__, CheckpointError) and "broken.ckpt" in str(caught.value)
    assert not (tmp_path / "m.gguf").exists()
    api_convert(GQA, tmp_path / "m.gguf", "llama2", tokenizer=TOKENIZER)
    with pytest.raises(ConvertError, match="already exists"):
        api_convert(GQA, tmp_path / "m.gguf", "llama2", tokenizer=TOKENIZER)


def test_import_gguf_out_stays_cheap():
    import subprocess
    code = "import sys, gguf_out; print(sorted(m for m in ('numpy', 'gguf', 'msckpt') if m in sys.modules))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert run.stdout.strip() == "[]"
