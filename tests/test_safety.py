"""ms2gguf never loses or corrupts a user's file: OUT = an input, concurrent writers, signals, stale temporary
files, dangling symlinks, full disks, failures in the middle of a set of outputs (gguf_out/publish.py).

Conversions that must be caught mid-way run as child processes of tests/paused_cli.py, which stops before a
chosen tensor or just before publishing until the test lets it go."""

import errno
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FIXTURES, LLAMA, TESTS, TOKENIZER, convert

from gguf_out import check, cli, conversion, publish

MHA = LLAMA / "mha"
PAUSED = TESTS / "paused_cli.py"
ROOT = TESTS.parent


def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def cli_args(out, *options, quiet=True):
    return [str(MHA / "model.ckpt"), "llama2", str(out), "--tokenizer", str(TOKENIZER), *(["-q"] if quiet else []),
            *map(str, options)]


def valid_gguf(path):
    report = check.check_file(path)
    return not report.errors


def start_paused(ctl, out, *options, pause="tensor:3", named=False, go=True, tag="a"):
    """A conversion stopped at ``pause``; returns (process, the file that lets it go on)."""
    ready, go_file = ctl / f"ready-{tag}", ctl / f"go-{tag}"
    command = [sys.executable, str(PAUSED), "--pause", pause, "--ready", str(ready)]
    command += ["--go", str(go_file)] if go else []
    command += ["--named-temp"] if named else []
    proc = subprocess.Popen(command + ["--", *cli_args(out, *options)], cwd=ROOT, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 120
    while not ready.exists():
        if proc.poll() is not None:
            pytest.fail(f"paused_cli ended early ({proc.returncode}): {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("paused_cli never reached its pause point")
        time.sleep(0.01)
    return proc, go_file


def finish(proc):
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


@pytest.fixture
def dirs(tmp_path):
    out, ctl = tmp_path / "out", tmp_path / "ctl"
    out.mkdir()
    ctl.mkdir()
    return out, ctl


# ------------------------------------------------------------------------------------------ OUT = an input

def _inputs(tmp_path):
    """A private copy of a model, so that a failed test cannot damage the committed fixtures."""
    d = tmp_path / "model"
    d.mkdir()
    for name in ("model.ckpt", "config.yaml"):
        shutil.copy(MHA / name, d / name)
    shutil.copy(TOKENIZER, d / "tokenizer.model")
    (d / "tokenizer_config.json").write_text("{}")
    shutil.copy(ROOT / "maps" / "llama2.json", d / "family.json")
    (d / "chat.Modelfile").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    return d


def _run_on(d, out, *options):
    return cli.main([str(d / "model.ckpt"), str(d / "family.json"), str(out), "--tokenizer",
                     str(d / "tokenizer.model"), "--config", str(d / "config.yaml"), "-q", *map(str, options)])


CASES = {
    "checkpoint": lambda d: (d / "model.ckpt", ()),
    "config": lambda d: (d / "config.yaml", ()),
    "tokenizer": lambda d: (d / "tokenizer.model", ()),
    "tokenizer_config": lambda d: (d / "tokenizer_config.json", ()),
    "map": lambda d: (d / "family.json", ()),
    # the Modelfile beside OUT would be the chat template file
    "template-as-modelfile": lambda d: (d / "chat.gguf", ("--modelfile", "--chat-template", d / "chat.Modelfile")),
    "symlink-to-checkpoint": lambda d: (_symlink(d / "alias.gguf", d / "model.ckpt"), ()),
    "hardlink-to-config": lambda d: (_hardlink(d / "hard.gguf", d / "config.yaml"), ()),
    "other-spelling": lambda d: (d / ".." / d.name / "." / "model.ckpt", ()),
    "imatrix": lambda d: (_copied(FIXTURES / "imatrix" / "dense.imatrix.gguf", d / "importance.gguf"),
                          ("--outtype", "q4_k_m", "--imatrix", d / "importance.gguf")),
}


def _copied(source, dest):
    shutil.copy(source, dest)
    return dest


def _symlink(link, target):
    link.symlink_to(target)
    return link


def _hardlink(link, target):
    os.link(target, link)
    return link


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
@pytest.mark.parametrize("case", CASES)
def test_output_that_is_an_input_is_refused(tmp_path, capsys, case, force):
    d = _inputs(tmp_path)
    out, options = CASES[case](d)
    before = {p.name: sha(p) for p in d.iterdir()}
    assert _run_on(d, out, *options, *(["--force"] if force else [])) == 1
    err = capsys.readouterr().err.strip()
    named = out.with_suffix(".Modelfile") if "--modelfile" in options else out
    assert err.startswith(f"ms2gguf: error: {named}: is ") and "never overwrites an input" in err
    assert len(err.splitlines()) == 1
    assert {p.name: sha(p) for p in d.iterdir()} == before
    assert sorted(p.name for p in d.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
def test_a_split_file_that_is_an_input_is_refused(tmp_path, capsys, force):
    """The files of a split set are known only once the plan is made: each is checked then, before any writing."""
    d = _inputs(tmp_path)
    part = _hardlink(d / "s-00002-of-00003.gguf", d / "config.yaml")
    before = {p.name: sha(p) for p in d.iterdir()}
    assert _run_on(d, d / "s.gguf", "--split-max-tensors", "8", *(["--force"] if force else [])) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"ms2gguf: error: {part}: is the config ") and "never overwrites an input" in err
    assert {p.name: sha(p) for p in d.iterdir()} == before
    assert sorted(p.name for p in d.iterdir() if p.name.startswith(".")) == []


def test_a_copy_of_an_input_is_not_an_input(tmp_path, capsys):
    """Negative control: identity is the device and inode, not the name or the content."""
    d = _inputs(tmp_path)
    copy = tmp_path / "config-copy.gguf"
    shutil.copy(d / "config.yaml", copy)
    assert _run_on(d, copy, "--force") == 0
    assert valid_gguf(copy)


@pytest.mark.parametrize("member", ["rank_1/llama_rank_1-1_10.ckpt", "strategy.ckpt"])
def test_a_file_inside_a_checkpoint_directory_is_refused(tmp_path, capsys, member):
    ckpt = tmp_path / "tp2x2"
    shutil.copytree(FIXTURES / "dist_llama" / "tp2x2", ckpt)
    before = sha(ckpt / member)
    assert convert(ckpt, ckpt / member, "--config", LLAMA / "bf16" / "config.yaml", "--force") == 1
    err = capsys.readouterr().err
    assert "never overwrites an input" in err and f"part of the checkpoint {ckpt}" in err
    assert sha(ckpt / member) == before


def test_a_gguf_inside_a_checkpoint_directory_may_be_replaced(tmp_path):
    """A GGUF is never checkpoint content: converting into the checkpoint directory can be repeated."""
    ckpt = tmp_path / "tp2x2"
    shutil.copytree(FIXTURES / "dist_llama" / "tp2x2", ckpt)
    for options in ((), ("--force",)):
        assert convert(ckpt, ckpt / "model.gguf", "--config", LLAMA / "bf16" / "config.yaml", *options) == 0


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
def test_two_outputs_that_are_one_file_are_refused(tmp_path, capsys, force):
    """OUT x.Modelfile with --modelfile: the GGUF and its Modelfile would be one file, and --force would keep only
    the Modelfile."""
    out = tmp_path / "x.Modelfile"
    assert convert(MHA / "model.ckpt", out, "--modelfile", *(["--force"] if force else [])) == 1
    assert f"{out}: the same file as {out}, which this run also writes" in capsys.readouterr().err
    both = (tmp_path / "{ftype}.gguf", "--outtype", "f16,bf16", "--force")
    assert convert(MHA / "model.ckpt", *both) == 0                  # negative control
    (tmp_path / "BF16.gguf").unlink()
    (tmp_path / "BF16.gguf").symlink_to(tmp_path / "F16.gguf")
    before = sha(tmp_path / "F16.gguf")
    assert convert(MHA / "model.ckpt", *both) == 1
    assert f"{tmp_path / 'BF16.gguf'}: the same file as {tmp_path / 'F16.gguf'}" in capsys.readouterr().err
    assert sha(tmp_path / "F16.gguf") == before


# ------------------------------------------------------------------------------------------ symlinks

def test_dangling_symlink_output_is_an_error(tmp_path, capsys):
    link = tmp_path / "o.gguf"
    link.symlink_to(tmp_path / "missing" / "o.gguf")
    assert convert(MHA / "model.ckpt", link) == 1
    err = capsys.readouterr().err
    assert "a symbolic link to" in err and "which does not exist" in err and ".tmp" not in err
    assert sorted(os.listdir(tmp_path)) == ["o.gguf"] and link.is_symlink()


def test_symlink_output_replaces_its_target_in_the_target_directory(tmp_path):
    """With --force the file the link points to is replaced (its temporary file beside it, so the rename never
    crosses a filesystem) and the link stays a link."""
    (tmp_path / "models").mkdir()
    target = tmp_path / "models" / "real.gguf"
    target.write_bytes(b"old")
    link = tmp_path / "o.gguf"
    link.symlink_to(target)
    assert convert(MHA / "model.ckpt", link, "--force") == 0
    assert link.is_symlink() and valid_gguf(target)
    assert sorted(os.listdir(tmp_path / "models")) == ["real.gguf"]


# ------------------------------------------------------------------------------------------ concurrent writers

@pytest.mark.parametrize("named", [False, True], ids=["o_tmpfile", "named_temp"])
def test_two_writers_exactly_one_wins(dirs, named):
    out_dir, ctl = dirs
    out = out_dir / "o.gguf"
    runs = [start_paused(ctl, out, "--name", tag, pause="publish", named=named, tag=tag) for tag in ("A", "B")]
    for _, go in runs:
        go.touch()
    results = [finish(proc) for proc, _ in runs]
    assert sorted(rc for rc, _ in results) == [0, 1]
    loser = next(err for rc, err in results if rc == 1).strip()
    assert loser == f"ms2gguf: error: {out}: already exists (another run may have written it meanwhile; use " \
                    "--force to overwrite); nothing was written"
    assert os.listdir(out_dir) == ["o.gguf"] and valid_gguf(out)
    from gguf import GGUFReader
    name = GGUFReader(out).fields["general.name"]
    assert bytes(name.parts[name.data[0]]).decode() == "AB"[[rc for rc, _ in results].index(0)]


def test_a_live_writers_temporary_file_is_never_removed(dirs, capsys):
    """A second run cleans only stale temporary files: the paused run's is locked, so it stays, and the paused
    run then completes."""
    out_dir, ctl = dirs
    out = out_dir / "o.gguf"
    proc, go = start_paused(ctl, out, "--force", named=True)
    temps = [n for n in os.listdir(out_dir) if n.endswith(".tmp")]
    assert temps == [f".o.gguf.{publish.HOST}.{proc.pid}.tmp"]
    assert cli.main(cli_args(out, "--force", quiet=False)) == 0      # not quiet: it would say what it removed
    assert "removed" not in capsys.readouterr().err
    assert (out_dir / temps[0]).exists()
    go.touch()
    assert finish(proc)[0] == 0
    assert os.listdir(out_dir) == ["o.gguf"] and valid_gguf(out)


# ------------------------------------------------------------------------------------------ signals

@pytest.mark.parametrize("named", [False, True], ids=["o_tmpfile", "named_temp"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
def test_signal_mid_conversion_leaves_nothing(dirs, signum, named):
    out_dir, ctl = dirs
    proc, _ = start_paused(ctl, out_dir / "o.gguf", named=named, go=False)
    proc.send_signal(signum)
    rc, err = finish(proc)
    assert rc == 128 + signum
    last = err.strip().splitlines()[-1]
    assert last == ("ms2gguf: interrupted; nothing was written" if signum == signal.SIGINT
                    else f"ms2gguf: stopped by {signum.name}; nothing was written")
    assert os.listdir(out_dir) == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_signal_keeps_an_existing_output_under_force(dirs, signum):
    out_dir, ctl = dirs
    out = out_dir / "o.gguf"
    assert convert(MHA / "model.ckpt", out) == 0
    before = sha(out)
    proc, _ = start_paused(ctl, out, "--force", "--outtype", "q8_0", go=False)
    proc.send_signal(signum)
    finish(proc)
    assert sha(out) == before and os.listdir(out_dir) == ["o.gguf"]


def test_sigkill_leaves_no_anonymous_temporary_file(dirs):
    out_dir, ctl = dirs
    proc, _ = start_paused(ctl, out_dir / "o.gguf", go=False)
    proc.kill()
    finish(proc)
    assert os.listdir(out_dir) == []


def test_sigkill_named_temporary_file_is_removed_by_the_next_run(dirs, capsys):
    out_dir, ctl = dirs
    out = out_dir / "o.gguf"
    proc, _ = start_paused(ctl, out, named=True, go=False)
    proc.kill()
    finish(proc)
    stale = out_dir / f".o.gguf.{publish.HOST}.{proc.pid}.tmp"
    assert os.listdir(out_dir) == [stale.name]
    assert cli.main(cli_args(out, quiet=False)) == 0
    assert f"note: removed {stale}, left by an interrupted run" in capsys.readouterr().err
    assert os.listdir(out_dir) == ["o.gguf"] and valid_gguf(out)


def test_ignored_signal_stays_ignored():
    """Under nohup SIGHUP is ignored; the converter must not start dying of it."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with publish.signals_cleaned_up():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is publish._handler
        assert signal.getsignal(signal.SIGTERM) is not publish._handler
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_signal_during_publishing_waits_until_the_set_is_whole(tmp_path):
    with pytest.raises(publish.Terminated), publish.deferred_signals():
        publish._handler(signal.SIGTERM, None)
        (tmp_path / "after-the-signal").touch()     # still runs
    assert (tmp_path / "after-the-signal").exists()


# ------------------------------------------------------------------------------------------ stale files

def _dead_pid():
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_stale_temporary_files_only(tmp_path):
    import fcntl

    real = tmp_path / "o.gguf"
    host = publish.HOST
    files = {
        "dead": f".o.gguf.{host}.{_dead_pid()}.tmp",
        "dead-old": f".o.gguf.{host}.{_dead_pid()}.old",
        "alive": f".o.gguf.{host}.{os.getppid()}.tmp",
        "locked": f".o.gguf.{host}.{_dead_pid()}.tmp",
        "foreign-fresh": ".o.gguf.elsewhere.1.tmp",
        "foreign-old": ".o.gguf.elsewhere.2.tmp",
        "other-output": f".p.gguf.{host}.{_dead_pid()}.tmp",
        "not-ours": ".o.gguf.abcdef.tmp",
    }
    for name in files.values():
        (tmp_path / name).write_bytes(b"x")
    old = time.time() - 2 * publish.FOREIGN_STALE_SECONDS
    os.utime(tmp_path / files["foreign-old"], (old, old))
    held = os.open(tmp_path / files["locked"], os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        removed = publish.clean_stale(real)
    finally:
        os.close(held)
    assert sorted(p.name for p in removed) == sorted(files[k] for k in ("dead", "dead-old", "foreign-old"))
    assert sorted(os.listdir(tmp_path)) == sorted(files[k] for k in ("alive", "locked", "foreign-fresh",
                                                                     "other-output", "not-ours"))


# ------------------------------------------------------------------------------------------ sets of files

def test_a_set_is_all_or_nothing_when_a_later_file_appears(dirs):
    """Two outtypes; while the run is finishing, someone else creates the second file: the first is taken back."""
    out_dir, ctl = dirs
    proc, go = start_paused(ctl, out_dir / "o-{ftype}.gguf", "--outtype", "f16,q8_0", pause="publish")
    (out_dir / "o-Q8_0.gguf").write_bytes(b"mine")
    go.touch()
    rc, err = finish(proc)
    assert rc == 1 and f"{out_dir / 'o-Q8_0.gguf'}: already exists" in err
    assert err.strip().endswith(f"; nothing was written ({out_dir / 'o-F16.gguf'} taken back)")
    assert os.listdir(out_dir) == ["o-Q8_0.gguf"] and (out_dir / "o-Q8_0.gguf").read_bytes() == b"mine"


def test_modelfile_failure_takes_the_gguf_back(dirs):
    out_dir, ctl = dirs
    proc, go = start_paused(ctl, out_dir / "o.gguf", "--modelfile", pause="publish")
    (out_dir / "o.Modelfile").write_text("FROM elsewhere\n")
    go.touch()
    rc, err = finish(proc)
    assert rc == 1 and err.strip() == f"ms2gguf: error: {out_dir / 'o.Modelfile'}: already exists (another run " \
                                      "may have written it meanwhile; use --force to overwrite); nothing was " \
                                      f"written ({out_dir / 'o.gguf'} taken back)"
    assert os.listdir(out_dir) == ["o.Modelfile"]


def test_modelfile_write_error_names_the_modelfile(tmp_path, monkeypatch, capsys):
    def failing(self, text):
        raise publish.ConvertError(f"{self.path}: cannot write (Input/output error); nothing was written")

    monkeypatch.setattr(publish.Output, "write_text", failing)
    assert convert(MHA / "model.ckpt", tmp_path / "o.gguf", "--modelfile") == 1
    assert f"{tmp_path / 'o.Modelfile'}: cannot write" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_forced_set_puts_the_replaced_files_back(tmp_path, monkeypatch, capsys):
    """--force over two existing files; the second cannot be put in place: the first old file comes back."""
    out = tmp_path / "o-{ftype}.gguf"
    f16, q8 = tmp_path / "o-F16.gguf", tmp_path / "o-Q8_0.gguf"
    f16.write_bytes(b"old f16")
    q8.write_bytes(b"old q8")
    real, calls = publish.Output._publish, []

    def second_fails(self):
        calls.append(self.path)
        if len(calls) == 2:
            raise publish.ConvertError(f"{self.path}: cannot put the new file in place (Input/output error)")
        return real(self)

    monkeypatch.setattr(publish.Output, "_publish", second_fails)
    assert convert(MHA / "model.ckpt", out, "--outtype", "f16,q8_0", "--force") == 1
    assert f"{q8}: cannot put the new file in place" in capsys.readouterr().err
    assert f16.read_bytes() == b"old f16" and q8.read_bytes() == b"old q8"
    assert sorted(os.listdir(tmp_path)) == ["o-F16.gguf", "o-Q8_0.gguf"]


def test_forced_set_leaves_no_backups(tmp_path):
    out = tmp_path / "o.gguf"
    out.write_bytes(b"old")
    assert convert(MHA / "model.ckpt", out, "--force", "--modelfile") == 0
    assert sorted(os.listdir(tmp_path)) == ["o.Modelfile", "o.gguf"] and valid_gguf(out)


# ------------------------------------------------------------------------------------------ full disks

def test_too_little_free_space_is_refused_before_writing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(publish, "_free", lambda output: 1000)
    assert convert(MHA / "model.ckpt", tmp_path / "o.gguf") == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"ms2gguf: error: {tmp_path / 'o.gguf'}: needs ") and \
        err.endswith(f"but {tmp_path} has only 1000 B free; nothing was written")
    assert os.listdir(tmp_path) == []


def test_enospc_while_writing(tmp_path, monkeypatch, capsys):
    """The in-process full disk: a write fails with ENOSPC in the middle of the data."""
    real, calls = conversion.encode_rows, []

    def filling(*args):
        calls.append(1)
        if len(calls) == 4:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args)

    monkeypatch.setattr(conversion, "encode_rows", filling)
    assert convert(MHA / "model.ckpt", tmp_path / "o.gguf", "--outtype", "q8_0") == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"ms2gguf: error: {tmp_path / 'o.gguf'}: no space left on the device while writing; ")
    assert "needed in" in err and ".tmp" not in err and len(err.splitlines()) == 1
    assert os.listdir(tmp_path) == []


def _tmpfs_script(fs, body):
    """Run ``body`` (sh) with a 600 KiB tmpfs mounted at ``fs``, in a private mount namespace."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1)")
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=4k tmpfs {fs}"],
                           capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {probe.stderr.strip()}")
    script = f"mount -t tmpfs -o size=600k tmpfs '{fs}' || exit 99\n{body}"
    return subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, cwd=ROOT,
                          timeout=300, check=False)


def test_full_tmpfs_is_refused_up_front(tmp_path):
    fs = tmp_path / "fs"
    fs.mkdir()
    cmd = " ".join(f"'{a}'" for a in [sys.executable, "-m", "gguf_out.cli",
                                       *cli_args(fs / "o.gguf", "--outtype", "f32")])
    run = _tmpfs_script(fs, f"{cmd}; echo rc=$?; ls -A '{fs}'")
    assert run.stdout.splitlines() == ["rc=1"], run.stderr
    assert run.stderr.startswith(f"ms2gguf: error: {fs / 'o.gguf'}: needs ") and "KiB free" in run.stderr


def test_tmpfs_filling_up_while_writing(tmp_path):
    """A real ENOSPC: the disk fills up (another program writing) while the conversion is paused mid-way."""
    fs, ctl = tmp_path / "fs", tmp_path / "ctl"
    fs.mkdir()
    ctl.mkdir()
    cmd = " ".join(f"'{a}'" for a in [sys.executable, str(PAUSED), "--pause", "tensor:2", "--ready",
                                       str(ctl / "ready"), "--go", str(ctl / "go"), "--",
                                       *cli_args(fs / "o.gguf")])
    body = f"""{cmd} 2>'{ctl / "err"}' & pid=$!
while [ ! -e '{ctl / "ready"}' ]; do sleep 0.05; done
dd if=/dev/zero of='{fs / "filler"}' bs=4096 2>/dev/null
touch '{ctl / "go"}'; wait $pid; echo rc=$?; ls -A '{fs}'"""
    run = _tmpfs_script(fs, body)
    assert run.stdout.splitlines() == ["rc=1", "filler"], run.stderr
    err = (ctl / "err").read_text().strip()
    assert err.startswith(f"ms2gguf: error: {fs / 'o.gguf'}: no space left on the device while writing; ") \
        and len(err.splitlines()) == 1, err


def test_enospc_while_decrypting_names_the_temporary_directory(tmp_path, monkeypatch):
    """An encrypted checkpoint is decrypted into an anonymous file in --tmp-dir; that filling up is one line."""
    import json

    pytest.importorskip("cryptography")
    from msckpt import CheckpointError, encryption, open_checkpoint

    name = "enc_AES-GCM_multiblock.ckpt"
    enc = json.loads((FIXTURES / "ckpt" / "expected.json").read_text())[name]["encryption"]
    real, calls = encryption._block, []

    def filling(*args):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args)

    monkeypatch.setattr(encryption, "_block", filling)
    with pytest.raises(CheckpointError) as err:
        open_checkpoint(FIXTURES / "ckpt" / name, dec_key=bytes.fromhex(enc["key_hex"]), dec_mode=enc["mode"],
                        tmp_dir=tmp_path)
    assert str(err.value).startswith(f"{FIXTURES / 'ckpt' / name}: no space left in {tmp_path} for the decrypted "
                                     "checkpoint (about ")
    assert str(err.value).endswith("MiB); choose another place with --tmp-dir") and len(calls) == 2
    assert os.listdir(tmp_path) == []


def test_filesystem_without_hard_links(tmp_path, monkeypatch, capsys):
    """FAT and some FUSE filesystems have neither O_TMPFILE nor link(): the named temporary file is renamed, and
    an existing OUT is still refused."""
    def no_links(*args, **kwargs):
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(publish, "USE_TMPFILE", False)
    monkeypatch.setattr(publish.os, "link", no_links)
    out = tmp_path / "o.gguf"
    assert convert(MHA / "model.ckpt", out, "--modelfile") == 0
    assert sorted(os.listdir(tmp_path)) == ["o.Modelfile", "o.gguf"] and valid_gguf(out)
    assert convert(MHA / "model.ckpt", out, "--force", "--outtype", "q8_0") == 0
    assert sorted(os.listdir(tmp_path)) == ["o.Modelfile", "o.gguf"] and valid_gguf(out)
    late = tmp_path / "late.gguf"
    output = publish.Output(late, force=False).open()
    late.write_bytes(b"theirs")             # another run got there first
    with pytest.raises(publish.ConvertError, match="already exists"):
        publish.publish([output])
    publish.discard([output])
    assert late.read_bytes() == b"theirs" and sorted(os.listdir(tmp_path)) == ["late.gguf", "o.Modelfile", "o.gguf"]


def test_the_config_json_an_mcore_yaml_reads_is_an_input(tmp_path, capsys):
    """An mcore yaml takes the architecture from pretrained_model_dir's config.json: that file is an input too."""
    import yaml

    src = FIXTURES / "qwen3" / "contiguous"
    (tmp_path / "hf").mkdir()
    shutil.copy(src / "config.json", tmp_path / "hf" / "config.json")
    doc = yaml.safe_load((src / "config.yaml").read_text())
    doc["pretrained_model_dir"] = "hf"
    (tmp_path / "finetune.yaml").write_text(yaml.safe_dump(doc))
    before = sha(tmp_path / "hf" / "config.json")
    tokenizer = FIXTURES / "qwen2" / "tokenizer" / "tokenizer.json"
    options = ("--config", tmp_path / "finetune.yaml", "--force")
    assert convert(src / "model.ckpt", tmp_path / "hf" / "config.json", *options, map_name="qwen3",
                   tokenizer=tokenizer) == 1
    assert "is the config" in capsys.readouterr().err
    assert sha(tmp_path / "hf" / "config.json") == before
    assert convert(src / "model.ckpt", tmp_path / "o.gguf", *options, map_name="qwen3", tokenizer=tokenizer) == 0


def test_enospc_names_the_output_whose_filesystem_is_full(tmp_path, monkeypatch, capsys):
    """Outputs on two filesystems (simulated: free space per output): the error names the one that ran out."""
    real_encode, calls = conversion.encode_rows, []
    real_free = publish._free

    def filling(*args):
        calls.append(1)
        if len(calls) == 6:
            monkeypatch.setattr(publish, "_free", lambda o: 0 if "Q8_0" in o.path.name else real_free(o))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_encode(*args)

    monkeypatch.setattr(conversion, "encode_rows", filling)
    assert convert(MHA / "model.ckpt", tmp_path / "o-{ftype}.gguf", "--outtype", "f32,q8_0") == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"ms2gguf: error: {tmp_path / 'o-Q8_0.gguf'}: no space left on the device while writing; ")
    assert os.listdir(tmp_path) == []
