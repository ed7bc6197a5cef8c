"""``--modelfile``, ``--system`` and ``--ollama NAME``: the Modelfile beside OUT and ``ollama create``.

Ollama is not installable here. The Modelfile is read back with ``read_modelfile``, which follows the grammar of
Ollama's parser (``parser/parser.go``: a command word, its value up to the end of the line, triple-quoted values
across lines kept verbatim between the quotes, ``#`` comment lines), and a fake ``ollama`` executable on PATH
records how it is called, validates the Modelfile and the GGUF it names, and exits with a chosen status.
"""

import os
import shlex
import stat
import sys
from pathlib import Path

import pytest
from conftest import LLAMA, TOKENIZER, convert

from gguf_out import modelfile
from gguf_out.templates import CHATML, LLAMA2_CHAT, Choice
from gguf_out.vocab import load_sentencepiece

MHA = LLAMA / "mha" / "model.ckpt"
REPO = Path(__file__).resolve().parent.parent
LLAMA2_STOPS = ["[INST]", "[/INST]", "<<SYS>>", "<</SYS>>", "</s>"]


def read_modelfile(path):
    """[(command, value)] as Ollama's parser reads them; PARAMETER values as ("parameter name", value)."""
    commands = []
    lines = Path(path).read_text(encoding="utf-8").split("\n")
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        word, _, value = line.partition(" ")
        word = word.lower()
        if word == "parameter":
            name, _, value = value.strip().partition(" ")
            word = f"parameter {name}"
        value = value.strip()
        if value.startswith('"""'):
            while not (len(value) >= 6 and value.endswith('"""')):
                assert i < len(lines), "unterminated triple-quoted value"
                value += "\n" + lines[i]
                i += 1
                value = value.rstrip(" \t")
            value = value[3:-3]
        elif value.startswith('"'):
            assert value.endswith('"') and len(value) >= 2, line
            value = value[1:-1]
        assert word.split()[0] in ("from", "template", "system", "parameter", "license", "adapter", "message"), word
        commands.append((word, value))
    return commands


def values(commands, word):
    return [v for w, v in commands if w == word]


def test_modelfile_beside_out(tmp_path):
    out = tmp_path / "tiny-f16.gguf"
    assert convert(MHA, out, "--modelfile") == 0
    path = tmp_path / "tiny-f16.Modelfile"
    commands = read_modelfile(path)
    assert values(commands, "from") == ["./tiny-f16.gguf"]
    assert (path.parent / values(commands, "from")[0]).resolve() == out.resolve()
    assert values(commands, "template") == [LLAMA2_CHAT.go]      # recognised from tokenizer_config.json
    assert values(commands, "parameter stop") == LLAMA2_STOPS
    assert values(commands, "parameter num_ctx") == ["2048"]     # the fixture's max_position_embedding
    assert values(commands, "system") == []
    assert path.read_text().startswith("# Ollama Modelfile written by ms2gguf\n")
    assert "# chat format: llama2-chat (from " in path.read_text()


def test_system_prompt_and_implied_modelfile(tmp_path):
    out = tmp_path / "m.gguf"
    text = "You are a pirate.\nAnswer in one line, with \"quotes\" if needed."
    assert convert(MHA, out, "--system", text) == 0
    commands = read_modelfile(tmp_path / "m.Modelfile")
    assert values(commands, "system") == [text]
    assert values(commands, "template") == [LLAMA2_CHAT.go]


def test_built_in_template_chosen_by_option(tmp_path):
    out = tmp_path / "m.gguf"
    assert convert(MHA, out, "--modelfile", "--chat-template", "chatml") == 0
    commands = read_modelfile(tmp_path / "m.Modelfile")
    assert values(commands, "template") == [CHATML.go]
    assert values(commands, "parameter stop") == ["<|im_start|>", "<|im_end|>", "</s>"]


def test_unrecognised_template_gives_no_template_and_a_warning(tmp_path, capsys):
    template = tmp_path / "alpaca.jinja"
    template.write_text("{% for m in messages %}### {{ m['role'] }}:\n{{ m['content'] }}\n\n{% endfor %}"
                        "### assistant:\n")
    out = tmp_path / "m.gguf"
    assert convert(MHA, out, "--modelfile", "--chat-template", template, quiet=False) == 0
    commands = read_modelfile(tmp_path / "m.Modelfile")
    assert values(commands, "template") == [] and values(commands, "parameter stop") == ["</s>"]
    err = capsys.readouterr().err
    assert "m.Modelfile has no TEMPLATE: the chat template is not one of the built-in formats" in err


def test_no_chat_template_at_all(tmp_path, capsys):
    out = tmp_path / "m.gguf"
    assert convert(MHA, out, "--modelfile", "--chat-template", "none", quiet=False) == 0
    assert values(read_modelfile(tmp_path / "m.Modelfile"), "template") == []
    assert "no TEMPLATE: there is no chat template" in capsys.readouterr().err


@pytest.mark.parametrize("context,num_ctx", [(2048, 2048), (8192, 8192), (131072, 8192)])
def test_num_ctx_is_the_context_length_capped(context, num_ctx):
    vocab = load_sentencepiece(TOKENIZER)
    text = modelfile.render("x.gguf", Choice(LLAMA2_CHAT.jinja, LLAMA2_CHAT, "test"), vocab, context)
    assert f"\nPARAMETER num_ctx {num_ctx}\n" in text
    assert ("trained for 131072 tokens" in text) == (context > num_ctx)


def test_existing_modelfile_needs_force(tmp_path, capsys):
    out = tmp_path / "m.gguf"
    (tmp_path / "m.Modelfile").write_text("FROM precious\n")
    assert convert(MHA, out, "--modelfile") == 1
    assert capsys.readouterr().err.strip() == \
        f"ms2gguf: error: {tmp_path / 'm.Modelfile'}: already exists (use --force to overwrite)"
    assert not out.exists() and (tmp_path / "m.Modelfile").read_text() == "FROM precious\n"
    assert convert(MHA, out, "--modelfile", "--force") == 0
    assert values(read_modelfile(tmp_path / "m.Modelfile"), "from") == ["./m.gguf"]


def test_system_prompt_with_triple_quotes_is_refused(tmp_path, capsys):
    assert convert(MHA, tmp_path / "m.gguf", "--system", 'say """hi"""') == 1
    assert 'must not contain """' in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["-rf", "my model", ""])
def test_bad_ollama_name(tmp_path, capsys, name):
    assert convert(MHA, tmp_path / "m.gguf", f"--ollama={name}") == 1
    assert "not a model name" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# --- ollama create ----------------------------------------------------------------------------------------------

FAKE_OLLAMA = """#!{python}
# fake ollama: records its call, validates the Modelfile and its GGUF, exits with $FAKE_OLLAMA_STATUS
import json, os, sys
sys.path.insert(0, {repo!r})
from gguf_out.check import check_file
args = sys.argv[1:]
record = {{"args": args, "cwd": os.getcwd()}}
problems = []
if args[:1] != ["create"] or len(args) != 4 or args[2] != "-f":
    problems.append("usage: ollama create NAME -f Modelfile")
else:
    modelfile = os.path.join(os.getcwd(), args[3])
    lines = open(modelfile, encoding="utf-8").read().splitlines()
    froms = [line[5:].strip() for line in lines if line.startswith("FROM ")]
    if len(froms) != 1:
        problems.append("exactly one FROM")
    else:
        gguf = os.path.join(os.path.dirname(modelfile), froms[0])   # Ollama resolves FROM beside the Modelfile
        record["gguf"] = gguf
        if not os.path.isfile(gguf):
            problems.append("FROM: no such file " + gguf)
        else:
            problems += [p.text for p in check_file(gguf).errors]
    if not any(line.startswith('TEMPLATE \"\"\"') for line in lines):
        problems.append("no TEMPLATE")
record["problems"] = problems
with open(os.environ["FAKE_OLLAMA_RECORD"], "w") as f:
    json.dump(record, f)
print("transferring model data")
print("success" if not problems else "error: " + "; ".join(problems))
sys.exit(65 if problems else int(os.environ.get("FAKE_OLLAMA_STATUS", "0")))
"""


@pytest.fixture
def fake_ollama(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "ollama"
    exe.write_text(FAKE_OLLAMA.format(python=sys.executable, repo=str(REPO)))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    record = tmp_path / "record.json"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_OLLAMA_RECORD", str(record))
    return record


def _recorded(record):
    import json
    return json.loads(record.read_text())


def test_ollama_create_is_run(tmp_path, fake_ollama, capfd):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "tiny.gguf"
    assert convert(MHA, out, "--ollama", "tiny:latest") == 0
    record = _recorded(fake_ollama)
    modelfile_path = out_dir / "tiny.Modelfile"
    assert record["args"] == ["create", "tiny:latest", "-f", str(modelfile_path)]
    assert record["problems"] == [] and Path(record["gguf"]).resolve() == out.resolve()
    assert record["cwd"] == str(out_dir)
    captured = capfd.readouterr()
    assert "transferring model data\nsuccess\n" in captured.out      # ollama's output is streamed through
    assert f"ms2gguf: running ollama create tiny:latest -f {modelfile_path}" in captured.err


@pytest.mark.parametrize("status", [1, 3])
def test_ollama_failure_becomes_our_exit_status(tmp_path, fake_ollama, monkeypatch, capfd, status):
    monkeypatch.setenv("FAKE_OLLAMA_STATUS", str(status))
    out = tmp_path / "tiny.gguf"
    assert convert(MHA, out, "--ollama", "tiny") == status
    assert _recorded(fake_ollama)["problems"] == []
    err = capfd.readouterr().err
    assert f"'ollama create' failed (exit status {status}); the GGUF and tiny.Modelfile are kept" in err
    assert out.is_file() and (tmp_path / "tiny.Modelfile").is_file()


def test_fake_ollama_rejects_a_broken_modelfile(tmp_path, fake_ollama):
    """Negative control: the fake really validates (a Modelfile whose FROM is missing fails)."""
    out = tmp_path / "tiny.gguf"
    assert convert(MHA, out, "--modelfile") == 0
    out.unlink()
    assert modelfile.run_ollama("tiny", tmp_path / "tiny.Modelfile") == 65
    assert _recorded(fake_ollama)["problems"] == [f"FROM: no such file {tmp_path}/./tiny.gguf"]


def test_without_ollama_the_command_is_printed(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    out = tmp_path / "my dir" / "tiny.gguf"
    out.parent.mkdir()
    assert convert(MHA, out, "--ollama", "tiny") == 0
    err = capsys.readouterr().err
    command = f"ollama create tiny -f {shlex.quote(str(out.parent / 'tiny.Modelfile'))}"
    assert err.endswith(f"ms2gguf: no 'ollama' executable on PATH; to import the model later, run:\n  {command}\n")
    assert shlex.split(command)[-1] == str(out.parent / "tiny.Modelfile")
    assert (out.parent / "tiny.Modelfile").is_file() and out.is_file()


def test_dry_run_writes_no_modelfile(tmp_path, fake_ollama):
    assert convert(MHA, tmp_path / "m.gguf", "--dry-run", "--ollama", "tiny") == 0
    assert not fake_ollama.exists() and not (tmp_path / "m.Modelfile").exists()
