"""Issue 18 beyond "one error line": what non-finite and F16-overflowing weights do with --allow-nonfinite and
--clamp-f16, and output hygiene (-q, progress in logs, --threads, key sources, strict --json, escaping)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TOKENIZER, convert
from gguf import GGUFReader

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import hostile  # noqa: E402

FIX = ROOT / "tests" / "fixtures"
LLAMA = FIX / "llama" / "gqa_fused"
WO = "model.layers.0.attention.wo.weight"


def patched(tmp_path, variant, value, dtype=np.float32, index=2):
    """A copy of a fixture checkpoint with one value of layer 0's wo replaced; returns (path, config)."""
    folder = tmp_path / variant
    folder.mkdir()
    for name in ("model.ckpt", "config.yaml"):
        shutil.copy(FIX / "llama" / variant / name, folder / name)
    (offset, _), _ = hostile.tensor_location(folder / "model.ckpt", WO)
    raw = np.array([value], dtype).tobytes()
    hostile.patch(folder / "model.ckpt", offset + index * len(raw), raw)
    return folder / "model.ckpt"


def tensor(path, name):
    return next(t for t in GGUFReader(path).tensors if t.name == name)


def test_nan_is_an_error_unless_allowed(tmp_path, capsys):
    ckpt = patched(tmp_path, "gqa_fused", np.nan)
    out = tmp_path / "o.gguf"
    assert convert(ckpt, out, "--outtype", "f32") == 1
    err = capsys.readouterr().err
    assert "blk.0.attn_output.weight" in err and "1 value that is not finite" in err and not out.exists()
    assert convert(ckpt, out, "--outtype", "f32", "--allow-nonfinite", quiet=False) == 0
    err = capsys.readouterr().err
    assert "1 non-finite values kept (--allow-nonfinite) in 1 tensor (blk.0.attn_output.weight)" in err
    assert np.isnan(np.asarray(tensor(out, "blk.0.attn_output.weight").data)).sum() == 1


def test_nan_in_a_copied_bf16_tensor_is_found(tmp_path, capsys):
    """BF16 -> BF16 is a byte-range copy in the kernel; the scan reads the bytes once on the side."""
    ckpt = patched(tmp_path, "bf16", 0x7FC0, np.uint16)
    assert convert(ckpt, tmp_path / "o.gguf", "--outtype", "bf16") == 1
    assert "1 value that is not finite" in capsys.readouterr().err


def test_f16_overflow_is_an_error_unless_clamped(tmp_path, capsys):
    ckpt = patched(tmp_path, "gqa_fused", 1e6)
    out = tmp_path / "o.gguf"
    assert convert(ckpt, out) == 1
    assert "1 value beyond ±65504, which F16 cannot hold" in capsys.readouterr().err and not out.exists()
    assert convert(ckpt, out, "--clamp-f16", quiet=False) == 0
    assert "1 values clamped to ±65504 for F16 (--clamp-f16)" in capsys.readouterr().err
    values = np.asarray(tensor(out, "blk.0.attn_output.weight").data).astype(np.float32)
    assert np.isfinite(values).all() and values.max() == 65504.0
    assert convert(ckpt, tmp_path / "f32.gguf", "--outtype", "f32") == 0     # fits F32: nothing to say


def test_clean_checkpoint_has_no_value_warnings(tmp_path, capsys):
    assert convert(LLAMA / "model.ckpt", tmp_path / "o.gguf", quiet=False) == 0
    assert "non-finite" not in capsys.readouterr().err


def test_quiet_prints_nothing_on_success_even_with_warnings(tmp_path, capsys):
    ckpt = patched(tmp_path, "gqa_fused", 1e6)
    assert convert(ckpt, tmp_path / "o.gguf", "--clamp-f16") == 0        # a warning without -q
    assert capsys.readouterr().err == ""


def test_progress_in_a_log_has_no_carriage_returns(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "gguf_out.cli", str(LLAMA / "model.ckpt"), "llama2",
                           str(tmp_path / "o.gguf"), "--tokenizer", str(TOKENIZER)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr and "wrote " in proc.stderr


def test_plain_progress_lines():
    import io

    from gguf_out.output import PlainProgress
    stream = io.StringIO()
    bar = PlainProgress(4 << 20, "writing", stream, every=0)
    bar.update(1 << 20)
    bar.update(3 << 20)
    assert stream.getvalue() == "ms2gguf: writing: 1 of 4 MiB (25%)\nms2gguf: writing: 4 of 4 MiB (100%)\n"
    quiet = io.StringIO()
    PlainProgress(4, "writing", quiet, every=3600).update(4)      # a short stage prints nothing
    assert quiet.getvalue() == ""


def test_threads_are_capped_at_the_cores(tmp_path, monkeypatch):
    from gguf_out import cli, conversion
    seen = []
    real = conversion.encode_rows
    monkeypatch.setattr(conversion, "encode_rows", lambda *a: seen.append(a[3]) or real(*a))
    assert convert(LLAMA / "model.ckpt", tmp_path / "o.gguf", "--threads", "100000") == 0
    assert seen and set(seen) == {cli.machine_cores()}


ENC = FIX / "ckpt" / "enc_AES-GCM_k16.ckpt"
KEY = json.loads((FIX / "ckpt" / "expected.json").read_text())["enc_AES-GCM_k16.ckpt"]["encryption"]["key_hex"]


@pytest.mark.parametrize("how", ["file", "env"])
def test_decryption_key_from_a_file_or_the_environment(tmp_path, capsys, monkeypatch, how):
    pytest.importorskip("cryptography")
    from gguf_out.cli import KEY_ENV, main
    monkeypatch.delenv(KEY_ENV, raising=False)
    key_file = tmp_path / "key"
    args = ["inspect", str(ENC), "--dec-mode", "AES-GCM", "--json", "--no-crc"]
    assert main(args) == 1
    assert "encrypted" in capsys.readouterr().err
    if how == "file":
        key_file.write_text(KEY + "\n")
        args += ["--dec-key-file", str(key_file)]
    else:
        monkeypatch.setenv(KEY_ENV, KEY)
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["encrypted"] == "AES-GCM"
    wrong = ("00" * 16) if how == "file" else "zz"
    if how == "file":
        key_file.write_text(wrong)
    else:
        monkeypatch.setenv(KEY_ENV, wrong)
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and (str(ENC) in err or KEY_ENV in err)


def test_inspect_json_is_strict_and_names_are_escaped(tmp_path, capsys):
    from gguf_out.cli import main
    path = tmp_path / "odd.ckpt"
    path.write_bytes(hostile.record(b"loss_scale", [], b"Float32", np.array([np.nan], np.float32).tobytes())
                     + hostile.record(b"w\x1b[2J\nforged", [2], b"Float32", np.zeros(2, np.float32).tobytes()))
    assert main(["inspect", str(path), "--json"]) == 0
    text = capsys.readouterr().out
    info = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in --json output"))
    assert "nan" in json.dumps(info) and "\x1b" not in text
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert "\x1b" not in text and "w\\x1b[2J\\x0aforged" in text
    assert not any(line.startswith("forged") for line in text.splitlines())


def test_internal_error_is_one_line_and_debug_shows_the_traceback(tmp_path, monkeypatch, capsys):
    from gguf_out import cli
    monkeypatch.setattr(cli, "cmd_inspect", lambda argv: {}["boom"])
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    assert cli.main(["inspect", "x"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ms2gguf: error: internal error: KeyError: 'boom'") and err.count("\n") == 1
    assert f"{cli.DEBUG_ENV}=1" in err
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    with pytest.raises(KeyError):
        cli.main(["inspect", "x"])


def test_missing_checkpoint_is_named_before_the_config(tmp_path, capsys):
    from gguf_out.cli import main
    assert main([str(tmp_path / "nope.ckpt"), "llama2", str(tmp_path / "o.gguf")]) == 1
    assert capsys.readouterr().err == f"ms2gguf: error: {tmp_path / 'nope.ckpt'}: checkpoint not found\n"


def test_escape():
    from gguf_out.output import escape
    assert escape("a\x1b[2J\nb\u202e\x7f") == "a\\x1b[2J\\x0ab\\u202e\\x7f"
    assert escape("naïve 名前") == "naïve 名前"
    assert os.linesep not in escape("x" + os.linesep)


def test_a_nan_loss_scale_in_common_json_is_shown_not_refused(tmp_path, capsys):
    """common.json only informs (MindFormers' json.dump writes a diverged loss scale as NaN): inspect shows it."""
    from gguf_out.cli import main
    root = tmp_path / "save"
    shutil.copytree(FIX / "mf_saves" / "ckpt2_tp2pp2dp2", root, ignore=shutil.ignore_patterns("expected.json"))
    common = root / "iteration_00000010" / "common.json"
    common.write_text(common.read_text().replace('"loss_scale": 1024.0', '"loss_scale": NaN'))
    assert main(["inspect", str(root), "--json"]) == 0
    info = json.loads(capsys.readouterr().out, parse_constant=lambda name: pytest.fail(f"{name} in --json output"))
    assert info["checkpoint2"]["common"]["loss_scale"] == "nan"


def test_f16_overflow_is_exactly_what_rounds_to_infinity():
    from gguf_out.finite import beyond_f16, nonfinite
    values = np.array([65504, 65519.99, 65520, -1e6, np.inf, np.nan, 0], np.float32)
    with np.errstate(over="ignore"):
        expected = int(np.count_nonzero(np.isinf(values.astype(np.float16)) & np.isfinite(values)))
    assert beyond_f16(values, "Float32") == expected == 2
    assert nonfinite(values, "Float32") == 2
    bf16 = (values.view(np.uint32) >> 16).astype(np.uint16)        # 65520 truncates to 65280 in bfloat16
    assert beyond_f16(bf16, "BFloat16") == 1 and nonfinite(bf16, "BFloat16") == 2
