"""The installed tool (pip install ., not editable) works on its own: console script, bundled maps, schemas."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import LLAMA, TOKENIZER

REPO = Path(__file__).resolve().parent.parent


def run(args, cwd):
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_installed_package_carries_its_data(tmp_path):
    probe = ("import gguf_out, msckpt; from gguf_out.maps import maps_dir; from msckpt.schema import schema_dir; "
             "print(gguf_out.__file__); print(maps_dir()); print(schema_dir())")
    result = run([sys.executable, "-c", probe], cwd=tmp_path)
    if "No module named 'gguf_out'" in result.stderr:
        pytest.skip("ms2gguf is not installed in this environment")
    assert result.returncode == 0, result.stderr
    package, maps, schemas = (Path(line) for line in result.stdout.split())
    if package.parent == REPO / "gguf_out":
        pytest.skip("ms2gguf is not installed as a regular package in this environment (source or editable)")
    assert maps == package.parent / "maps" and (maps / "llama2.json").is_file()
    assert schemas == package.parent.parent / "msckpt" / "proto" and (schemas / "checkpoint.desc").is_file()


def test_console_script_converts_with_a_bundled_map(tmp_path):
    exe = shutil.which("ms2gguf")
    if exe is None:
        pytest.skip("the ms2gguf console script is not installed")
    out = tmp_path / "tiny.gguf"
    result = run([exe, str(LLAMA / "gqa_fused" / "model.ckpt"), "llama2", str(out), "--tokenizer", str(TOKENIZER)],
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:4] == b"GGUF"
    assert "wrote" in result.stderr and "21 tensors" in result.stderr
    listing = run([exe, "inspect", str(LLAMA / "gqa_fused" / "model.ckpt")], cwd=tmp_path)
    assert listing.returncode == 0 and "model.layers.0.attention.w_qkv.weight" in listing.stdout
