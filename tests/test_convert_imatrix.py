"""--imatrix end to end: every tensor's type and bytes, and the quantize.imatrix.* keys, equal what the real
llama-quantize wrote with the same importance matrix (tests/fixtures/imatrix/truth.json, tests/
gen_imatrix_fixtures.py) for every quantized preset, on a dense and a mixture-of-experts model."""

import hashlib
import json

import numpy as np
import pytest
from conftest import FIXTURES
from gen_policy_tables import build
from gguf import GGUFReader
from test_imatrix import write_gguf

from gguf_out.cli import main as ms2gguf

IMATRIX = FIXTURES / "imatrix"
TRUTH = json.loads((IMATRIX / "truth.json").read_text()) if (IMATRIX / "truth.json").exists() else {"models": {}}
PRESETS = ["q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k",
           "q4_0", "q4_1", "q5_0", "q5_1", "q8_0"]


def describe(path):
    reader = GGUFReader(path)
    tensors = {t.name: [t.tensor_type.name, hashlib.sha256(t.data.tobytes()).hexdigest()[:16]] for t in reader.tensors}
    kvs = {k: [f.types[0].name, f.contents()] for k, f in reader.fields.items() if k.startswith("quantize.")}
    return {"tensors": tensors, "kvs": kvs}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The two fixture models' checkpoints, rebuilt from their seed (same bytes as when the truth was made)."""
    work = tmp_path_factory.mktemp("imx")
    return {name: build(name, spec["model"], work).parent for name, spec in TRUTH["models"].items()}


def convert(folder, out, *options, quiet=True):
    family = {"dense": "llama2", "qwen3moe": "qwen3_moe"}[folder.name]
    tokenizer = (FIXTURES / "llama" / "tokenizer" / "tokenizer.model" if family == "llama2"
                 else FIXTURES / "qwen2" / "tokenizer" / "tokenizer.json")
    return ms2gguf([str(folder / "model.ckpt"), family, str(out), "--tokenizer", str(tokenizer), *(["-q"] if quiet else []), *options])


@pytest.fixture(scope="module")
def converted(models, tmp_path_factory):
    """Every preset of both models in one run each, with the imatrix named as the truth's llama-quantize run
    named it (the path is written to quantize.imatrix.file)."""
    import os

    out = tmp_path_factory.mktemp("imx-out")
    cwd = os.getcwd()
    os.chdir(IMATRIX)
    try:
        for name, folder in models.items():
            assert convert(folder, out / f"{name}-{{ftype}}.gguf", "--outtype", ",".join(PRESETS),
                           "--imatrix", TRUTH["models"][name]["imatrix"]) == 0
    finally:
        os.chdir(cwd)
    return lambda name, preset: out / f"{name}-{preset.upper()}.gguf"


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("name", ["dense", "qwen3moe"])
def test_types_and_bytes_equal_llama_quantize(converted, name, preset):
    truth = TRUTH["models"][name]["presets"][preset]
    got = describe(converted(name, preset))
    assert got["kvs"] == truth["kvs"]
    types = {t: v[0] for t, v in got["tensors"].items()}
    assert types == {t: v[0] for t, v in truth["tensors"].items()}
    differ = [t for t, v in got["tensors"].items() if v[1] != truth["tensors"][t][1]]
    assert not differ, f"{len(differ)} tensors differ from llama-quantize's bytes: {differ[:5]}"


def test_the_truth_uses_the_imatrix():
    """The fixture is decisive: llama-quantize's Q4_0 with the matrix bumps the first ffn_down to Q4_1, and the
    keys say which matrix was used."""
    dense = TRUTH["models"]["dense"]["presets"]
    assert dense["q4_0"]["tensors"]["blk.0.ffn_down.weight"][0] == "Q4_1"
    assert dense["q4_0"]["tensors"]["blk.1.ffn_down.weight"][0] == "Q4_0"
    assert dense["q4_0"]["tensors"]["output.weight"][0] == "Q6_K"
    assert dense["q5_0"]["tensors"]["blk.0.ffn_down.weight"][0] == "Q5_1"
    assert dense["q4_k_m"]["kvs"]["quantize.imatrix.file"] == ["STRING", "dense.imatrix.gguf"]


def test_without_the_imatrix_the_bytes_differ(models, tmp_path):
    """Negative control: the same conversion without --imatrix gives other bytes for weighted tensors."""
    out = tmp_path / "m.gguf"
    assert convert(models["dense"], out, "--outtype", "q4_k_m") == 0
    got = describe(out)
    truth = TRUTH["models"]["dense"]["presets"]["q4_k_m"]["tensors"]
    assert got["tensors"]["blk.0.attn_k.weight"][1] != truth["blk.0.attn_k.weight"][1]
    assert got["tensors"]["blk.0.ffn_gate.weight"][1] != truth["blk.0.ffn_gate.weight"][1]
    assert not got["kvs"]


def test_left_out_tensor_is_quantized_without_and_named(models, tmp_path, capsys):
    out = tmp_path / "m.gguf"
    assert convert(models["dense"], out, "--outtype", "q4_k_m", "--imatrix", str(IMATRIX / "dense.imatrix.gguf"),
                   quiet=False) == 0     # -q hides warnings
    err = capsys.readouterr().err
    assert "no importance entry for blk.1.attn_q.weight; it is quantized without one" in err
    assert "no importance entry for token_embd.weight" in err
    assert "blk.0.attn_q.weight" not in err


def test_dat_and_gguf_give_identical_files(models, tmp_path):
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    assert convert(models["dense"], a, "--outtype", "q4_k_m", "--imatrix", str(IMATRIX / "dense.imatrix.gguf")) == 0
    assert convert(models["dense"], b, "--outtype", "q4_k_m", "--imatrix", str(IMATRIX / "dense.imatrix.dat")) == 0
    da, db = describe(a), describe(b)
    assert da["tensors"] == db["tensors"]
    # the keys differ only where the files do: the name (and the legacy file's trailer holds the same chunks)
    assert {k: v for k, v in da["kvs"].items() if k != "quantize.imatrix.file"} == \
        {k: v for k, v in db["kvs"].items() if k != "quantize.imatrix.file"}


def test_wrong_length_is_an_error_and_nothing_is_written(models, tmp_path, capsys):
    bad = write_gguf(tmp_path / "bad.gguf", {"blk.0.attn_q.weight": (np.ones((1, 128), np.float32), [1])})
    out = tmp_path / "m.gguf"
    assert convert(models["dense"], out, "--outtype", "q4_k_m", "--imatrix", str(bad)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"ms2gguf: error: {bad}: the entry for blk.0.attn_q.weight has 128 values, the tensor needs "
                       "256 columns = 256 (imatrix computed on another model?)")
    assert not out.exists() and not list(tmp_path.glob(".m.gguf*"))


def test_float_outtypes_ignore_the_imatrix(models, tmp_path, capsys):
    out = tmp_path / "m.gguf"
    assert convert(models["dense"], out, "--outtype", "f16", "--imatrix", str(IMATRIX / "dense.imatrix.gguf")) == 0
    assert not describe(out)["kvs"]
