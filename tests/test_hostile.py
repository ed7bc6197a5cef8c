"""Hostile input (issue 18): every case of tests/hostile.py, run through the real CLI under resource limits.

For each case: exit status 1, exactly one error line naming the damaged file (``check``: only problem lines),
no traceback, no "internal error" or "out of memory", within the CPU and address-space limits, the inputs
unchanged and nothing left beside OUT. Each case runs in a forked child of this process (the modules are
imported once), with RLIMIT_AS and RLIMIT_CPU set in the child so a regression cannot take the machine down;
a few run as real subprocesses of the installed entry point.
"""

import hashlib
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import hostile  # noqa: E402

MEMORY_HEADROOM = 600 << 20     # address space a case may add to this process's
CPU_SECONDS = 20
WALL_SECONDS = 60

# cases not fixed yet (each is a bug): they must fail today, so the list cannot go stale
KNOWN_OPEN = set()


def _vm_size():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _snapshot(folder):
    """{relative path: sha256 or kind} of everything in a case directory."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(folder))
            if path.is_symlink():
                out[rel] = "link:" + os.readlink(path)
            elif path.is_fifo():
                out[rel] = "fifo"
            elif path.is_dir():
                out[rel] = "dir"
            elif path.stat().st_size > 64 << 20:
                out[rel] = f"size:{path.stat().st_size}"
            else:
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def run_forked(argv, folder):
    """(exit status or signal name, stdout, stderr, seconds) of gguf_out.cli.main(argv) in a limited child."""
    from gguf_out import check, cli, conversion  # noqa: F401 -- imported before the fork, once
    out_path, err_path = folder.parent / f"{folder.name}.stdout", folder.parent / f"{folder.name}.stderr"
    limit = _vm_size() + MEMORY_HEADROOM
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:                                            # child: never returns
        code = 70
        try:
            # the encoder's thread pool (if an earlier test made one) has no threads in a forked child: a new one
            from gguf_out import encode
            encode._pool.cache_clear()
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            resource.setrlimit(resource.RLIMIT_CPU, (CPU_SECONDS, CPU_SECONDS + 1))
            out_fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            err_fd = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(out_fd, 1)
            os.dup2(err_fd, 2)
            sys.stdout = open(1, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
            sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
            os.chdir(folder)
            try:
                code = cli.main(list(argv))
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 2
        except BaseException:                               # noqa: BLE001 -- reported as a traceback below
            import traceback
            traceback.print_exc()
            code = 71
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code if isinstance(code, int) else 0)
    deadline = start + WALL_SECONDS
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            status = None
            break
        time.sleep(0.01)
    seconds = time.monotonic() - start
    stdout = out_path.read_text(encoding="utf-8", errors="replace")
    stderr = err_path.read_text(encoding="utf-8", errors="replace")
    out_path.unlink()
    err_path.unlink()
    if status is None:
        return "timeout", stdout, stderr, seconds
    if os.WIFSIGNALED(status):
        return signal.Signals(os.WTERMSIG(status)).name, stdout, stderr, seconds
    return os.WEXITSTATUS(status), stdout, stderr, seconds


def verdict(case, result, before, after):
    """The list of ways the outcome breaks the rules (empty: it is fine)."""
    status, stdout, stderr, seconds = result
    problems = []
    culprit = str(case.culprit)
    if status != 1:
        problems.append(f"exit status {status}")
    if "Traceback" in stderr or "Traceback" in stdout:
        problems.append("traceback")
    if case.mode == "error":
        lines = stderr.splitlines()
        if len(lines) != 1:
            problems.append(f"{len(lines)} stderr lines")
        line = lines[-1] if lines else ""
        if not line.startswith("ms2gguf: error: "):
            problems.append("not an error line")
        if culprit not in line:
            problems.append(f"does not name {case.culprit.name}")
        for word in ("internal error", "out of memory"):
            if word in line:
                problems.append(word)
        for word in case.contains:
            if word not in line:
                problems.append(f"lacks {word!r}")
        if "\x1b" in stderr:
            problems.append("raw escape character")
    else:
        lines = stdout.splitlines()
        if stderr:
            problems.append("stderr not empty")
        if not any(line.startswith(f"{culprit}: error: ") for line in lines):
            problems.append("no error line")
        if any(not line.startswith(f"{culprit}: ") for line in lines):
            problems.append("a line that is not a problem of the file")
        if "\x1b" in stdout:
            problems.append("raw escape character")
        for word in case.contains:
            if word not in stdout:
                problems.append(f"lacks {word!r}")
    if before != after:
        changed = sorted(set(before.items()) ^ set(after.items()))
        problems.append(f"files changed or left behind: {changed[:3]}")
    if case.out is not None and (case.out.exists() or case.out.is_symlink()):
        problems.append("OUT written")
    return problems


@pytest.mark.parametrize("name", sorted(hostile.CASES))
def test_hostile(tmp_path, name):
    folder = tmp_path / "case"
    folder.mkdir()
    case = hostile.CASES[name](folder)
    before = _snapshot(folder)
    result = run_forked(case.argv, folder)
    after = _snapshot(folder)
    problems = verdict(case, result, before, after)
    report = f"{name}: {problems} after {result[3]:.1f} s\nstdout: {result[1][-2000:]}\nstderr: {result[2][-2000:]}"
    if name in KNOWN_OPEN:
        assert problems, f"{name} is fixed: take it off KNOWN_OPEN"
        pytest.xfail(report)
    assert not problems, report


def test_catalogue_size():
    assert len(hostile.CASES) >= 150
    assert len(KNOWN_OPEN) <= 10


def test_negative_control(tmp_path):
    """The harness can fail: a working conversion is not 'one error line', and a traceback is caught."""
    folder = tmp_path / "case"
    folder.mkdir()
    p = hostile.llama(folder)
    case = hostile.Case(hostile.convert_argv(p), p["ckpt"], out=p["out"])
    before = _snapshot(folder)
    result = run_forked(case.argv, folder)
    problems = verdict(case, result, before, _snapshot(folder))
    assert result[0] == 0 and "exit status 0" in problems and "OUT written" in problems
    boom = run_forked(["inspect", "--json", "x"], folder)        # not a checkpoint: a clean error ...
    assert boom[0] == 1 and "Traceback" not in boom[2]
    assert "Traceback" in run_forked_raising(folder)[2]          # ... while a crash shows as a traceback


def run_forked_raising(folder):
    from gguf_out import cli
    original = cli.cmd_inspect

    def crash(argv):
        raise ValueError("boom")
    cli.cmd_inspect = crash
    os.environ[cli.DEBUG_ENV] = "1"
    try:
        return run_forked(["inspect", "x"], folder)
    finally:
        cli.cmd_inspect = original
        del os.environ[cli.DEBUG_ENV]


@pytest.mark.parametrize("name", ["ckpt-special-fifo", "ckpt-name-escapes", "config-value-num-heads-zero",
                                  "gguf-block-count-huge"])
def test_hostile_subprocess(tmp_path, name):
    """The installed entry point, as a real process with the same limits."""
    folder = tmp_path / "case"
    folder.mkdir()
    case = hostile.CASES[name](folder)
    before = _snapshot(folder)

    def limits():
        resource.setrlimit(resource.RLIMIT_AS, (1536 << 20, 1536 << 20))
        resource.setrlimit(resource.RLIMIT_CPU, (CPU_SECONDS, CPU_SECONDS + 1))
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "gguf_out.cli", *case.argv], cwd=folder, capture_output=True,
                          text=True, errors="replace", timeout=WALL_SECONDS, preexec_fn=limits)
    result = (proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)
    problems = verdict(case, result, before, _snapshot(folder))
    assert not problems, (problems, proc.stdout[-2000:], proc.stderr[-2000:])
