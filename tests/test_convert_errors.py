"""Bad conversion input: one-line errors naming the file and the problem, nothing left at OUT."""

import json
import os
import subprocess
import sys

import pytest
import yaml
from conftest import LLAMA, TOKENIZER, convert

from gguf_out.maps import maps_dir

MHA = LLAMA / "mha"


def error_of(capsys, *args, **kwargs):
    status = convert(*args, **kwargs)
    err = capsys.readouterr().err.strip()
    assert status == 1
    assert err.startswith("ms2gguf: error: ") and "\n" not in err, err
    return err


def edited_config(tmp_path, variant="mha", **changes):
    data = yaml.safe_load((LLAMA / variant / "config.yaml").read_text())
    data["model"]["model_config"].update(changes)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_existing_output_needs_force(tmp_path, capsys):
    out = tmp_path / "out.gguf"
    out.write_bytes(b"precious")
    err = error_of(capsys, MHA / "model.ckpt", out)
    assert "already exists" in err and "--force" in err
    assert out.read_bytes() == b"precious"
    assert convert(MHA / "model.ckpt", out, "--force") == 0
    assert out.read_bytes()[:4] == b"GGUF"


def test_unmapped_tensor_is_an_error(tmp_path, capsys):
    data = json.loads((maps_dir() / "llama2.json").read_text())
    data["tensors"] = [r for r in data["tensors"] if "w3" not in r["from"]]
    custom = tmp_path / "custom.json"
    custom.write_text(json.dumps(data))
    out = tmp_path / "out.gguf"
    err = error_of(capsys, MHA / "model.ckpt", out, map_name=str(custom))
    assert "unmapped tensor 'model.layers.0.feed_forward.w3.weight'" in err and "and 1 more" in err
    assert not out.exists()


@pytest.mark.parametrize("change,words", [
    ({"hidden_size": 128}, ["hidden_size = 128", "gives 64"]),
    ({"num_layers": 3}, ["num_layers = 3", "gives 2"]),
    ({"vocab_size": 500}, ["vocab_size = 500", "gives 480"]),
    ({"n_kv_heads": 2}, ["num_kv_heads = 2", "KV width 32", "gives 64"]),
    ({"intermediate_size": 256}, ["intermediate_size", "ffn_size = 256", "gives 192"]),
])
def test_config_contradicting_tensors(tmp_path, capsys, change, words):
    config = edited_config(tmp_path, **change)
    err = error_of(capsys, MHA / "model.ckpt", tmp_path / "o.gguf", "--config", config)
    assert str(config) in err
    for word in words:
        assert word in err, err


def test_missing_config(tmp_path, capsys):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes((MHA / "model.ckpt").read_bytes())
    err = error_of(capsys, ckpt, tmp_path / "o.gguf")
    assert "no config.yaml" in err and "--config" in err


def test_config_found_beside_checkpoint(tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes((MHA / "model.ckpt").read_bytes())
    (tmp_path / "finetune_llama.yaml").write_text((MHA / "config.yaml").read_text())
    assert convert(ckpt, tmp_path / "o.gguf") == 0


def test_missing_tokenizer(tmp_path, capsys):
    err = error_of(capsys, MHA / "model.ckpt", tmp_path / "o.gguf", tokenizer=tmp_path / "nope.model")
    assert "nope.model" in err


def test_tokenizer_larger_than_embedding():
    from gguf_out import vocab
    from gguf_out.errors import ConvertError

    v = vocab.load_sentencepiece(TOKENIZER)
    with pytest.raises(ConvertError, match="the tokenizer has 480 tokens but the embedding has only 100 rows"):
        vocab.pad_to(v, 100)


def test_unknown_map_name(tmp_path, capsys):
    err = error_of(capsys, MHA / "model.ckpt", tmp_path / "o.gguf", map_name="llama9")
    assert "no bundled map named 'llama9'" in err and "llama2" in err


def test_map_with_a_tensor_llama_cpp_does_not_know(tmp_path, capsys):
    data = json.loads((maps_dir() / "llama2.json").read_text())
    data["tensors"][0]["to"] = "tok_embd.weight"
    custom = tmp_path / "typo.json"
    custom.write_text(json.dumps(data))
    err = error_of(capsys, MHA / "model.ckpt", tmp_path / "o.gguf", map_name=str(custom))
    assert "'tok_embd.weight' is not a tensor of GGUF architecture 'llama'" in err


def test_not_a_checkpoint(tmp_path, capsys):
    bogus = tmp_path / "model.ckpt"
    bogus.write_bytes(b"\x7fELF" + bytes(100))
    err = error_of(capsys, bogus, tmp_path / "o.gguf", "--config", MHA / "config.yaml")
    assert str(bogus) in err and "not a MindSpore checkpoint" in err and "at byte 0" in err


def test_failure_while_writing_leaves_nothing(tmp_path, monkeypatch):
    """An error in the middle of the data phase removes the temporary file; OUT never appears."""
    from gguf_out import conversion as convert_module

    calls = []

    def failing(*args):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(*args)

    real = convert_module.encode_rows
    monkeypatch.setattr(convert_module, "encode_rows", failing)
    out = tmp_path / "out.gguf"
    assert convert(MHA / "model.ckpt", out, "--outtype", "q8_0") == 130
    assert len(calls) == 5
    assert os.listdir(tmp_path) == []


def test_cli_error_is_one_line_without_traceback(tmp_path):
    out = tmp_path / "o.gguf"
    result = subprocess.run([sys.executable, "-m", "gguf_out.cli", str(MHA / "model.ckpt"), "llama2", str(out),
                             "--config", str(tmp_path / "missing.yaml"), "--tokenizer", str(TOKENIZER)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip() == f"ms2gguf: error: {tmp_path / 'missing.yaml'}: config file not found"
    assert not out.exists()


def test_train_tp_needs_a_contiguous_layout(tmp_path, capsys):
    err = error_of(capsys, LLAMA / "gqa_fused" / "model.ckpt", tmp_path / "o.gguf", "--train-tp", "2")
    assert "--train-tp only matters for contiguous fused tensors" in err
    assert convert(LLAMA / "gqa_fused" / "model.ckpt", tmp_path / "o.gguf", "--train-tp", "2",
                   "--fused-layout", "contiguous") == 0
