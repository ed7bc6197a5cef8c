"""Putting finished files at the user's paths without ever losing or corrupting a file.

Every file a conversion writes (each GGUF, the Modelfile) is an ``Output``: written to a temporary file in the
directory of the path it is for, and published only when the whole set is complete and checked:

* the temporary file is anonymous (``O_TMPFILE``) where the filesystem supports it, so a run killed even by
  SIGKILL leaves nothing; elsewhere it is ``.OUT.<host>.<pid>.tmp`` beside OUT, held under ``flock`` for the
  run's whole life, and later runs remove such files only when their lock is free (and, on this host, their
  process is gone);
* publishing is ``link()``, which fails when OUT exists, so without ``--force`` an existing file is never
  replaced, not even one a concurrent run published a moment earlier; with ``--force`` it is ``rename()``, and
  the replaced file is kept under a second hard link until the whole set is in place;
* a set is all or nothing: when a later file cannot be published, the earlier ones are removed again (or the
  files they replaced put back);
* SIGTERM and SIGHUP unwind like Ctrl-C (``signals_cleaned_up``), and a signal that arrives while a set is
  being published waits until the set is whole or rolled back.
"""

import errno
import fcntl
import os
import signal
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from .errors import ConvertError
from .report import human_bytes

# Tests turn this off to exercise the named temporary files that filesystems without O_TMPFILE get.
USE_TMPFILE = True
# A temporary file from another host (a shared filesystem) is stale when its lock is free and it has not been
# written to for this long: that host's process ids mean nothing here.
FOREIGN_STALE_SECONDS = 600
HOST = socket.gethostname().replace("/", "_") or "localhost"
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_NO_TMPFILE = {errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT}
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
_NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS}


class Terminated(BaseException):
    """SIGTERM or SIGHUP, raised like KeyboardInterrupt so that every ``finally`` runs."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum
        self.name = signal.Signals(signum).name


def destination(path):
    """The file ``path`` names once symlinks are resolved: the temporary file must be made in its directory,
    or the final rename would cross filesystems. A dangling symlink or a directory is an error."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise ConvertError(f"{path}: a symbolic link to {os.readlink(path)}, which does not exist")
    real = Path(os.path.realpath(path))
    if real.is_dir():
        raise ConvertError(f"{path}: is a directory")
    if not real.parent.is_dir():
        raise ConvertError(f"{path}: the directory {real.parent} does not exist")
    if not os.access(real.parent, os.W_OK | os.X_OK):
        raise ConvertError(f"{path}: cannot create files in {real.parent} (not writable)")
    return real


def refuse_duplicates(outputs):
    """Two outputs of one run that are one file (``x.Modelfile`` with --modelfile, symlinks to one file) would
    leave only the last one published."""
    seen = {}
    for out in outputs:
        real = destination(out)
        if real in seen:
            raise ConvertError(f"{out}: the same file as {seen[real]}, which this run also writes; choose another "
                               "output path")
        seen[real] = out


def refuse_inputs(outputs, inputs):
    """An output that is one of the inputs (the same file, by device and inode: through a symlink, a hard link
    or another spelling of the path) is refused, ``--force`` or not. ``inputs``: (what, path) pairs; a
    directory stands for every file under it."""
    outs = {}
    for out in outputs:
        try:
            st = os.stat(out)
        except OSError:
            continue        # does not exist yet: cannot be an input
        outs[(st.st_dev, st.st_ino)] = out
    if not outs:
        return
    for what, path in inputs:
        if path is None:
            continue
        for file in _files(Path(path)):
            try:
                st = os.stat(file)
            except OSError:
                continue
            out = outs.get((st.st_dev, st.st_ino))
            if out is not None:
                which = f"the {what} {path}" if file == Path(path) else f"{file}, part of the {what} {path}"
                raise ConvertError(f"{out}: is {which}; ms2gguf never overwrites an input, not even with "
                                   "--force: choose another output path")


# what ms2gguf writes, which no checkpoint reader takes from a directory: a GGUF written into the checkpoint
# directory by an earlier run may be replaced with --force
OWN_SUFFIXES = (".gguf", ".Modelfile")


def _files(path):
    if not path.is_dir():
        yield path
        return
    for root, _, names in os.walk(path):
        for name in names:
            if not name.endswith(OWN_SUFFIXES):
                yield Path(root, name)


def temp_name(real, kind="tmp"):
    return real.with_name(f".{real.name}.{HOST}.{os.getpid()}.{kind}")


def clean_stale(real):
    """Remove ``.OUT.<host>.<pid>.tmp`` / ``.old`` files beside ``real`` that interrupted runs left behind:
    only those whose lock can be taken now (and, from this host, whose process is gone). Returns their paths."""
    prefix = f".{real.name}."
    removed = []
    try:
        entries = list(os.scandir(real.parent))
    except OSError:
        return removed
    for entry in entries:
        name = entry.name
        if not name.startswith(prefix) or not name.endswith((".tmp", ".old")):
            continue
        host, _, pid = name[len(prefix):-4].rpartition(".")
        if host and pid.isdigit() and _remove_if_stale(Path(entry.path), host, int(pid)):
            removed.append(Path(entry.path))
    return removed


def _remove_if_stale(path, host, pid):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False        # a live writer holds it
        if host == HOST:
            if pid != os.getpid() and _alive(pid):
                return False    # created, not locked yet
        elif time.time() - os.fstat(fd).st_mtime < FOREIGN_STALE_SECONDS:
            return False
        try:
            os.unlink(path)
        except OSError:
            return False
        return True
    finally:
        os.close(fd)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Output:
    """One file to publish at ``path``: created by ``open``, filled through ``fd``, published by ``publish``."""

    def __init__(self, path, force):
        self.path = Path(path)          # as the user wrote it: what every message names
        self.real = destination(path)
        self.force = force
        self.fd = None
        self.tmp = None                 # the named temporary file, if the filesystem has no O_TMPFILE
        self.size = 0                   # the final size, when known: for the free-space check
        self.stale = []

    def open(self):
        self.stale = clean_stale(self.real)
        fd = None
        if USE_TMPFILE and hasattr(os, "O_TMPFILE"):
            try:
                fd = os.open(self.real.parent, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o666)
            except OSError as err:
                if err.errno not in _NO_TMPFILE:
                    raise self._error("cannot create a temporary file in", err) from None
            if fd is not None and not os.path.exists(f"/proc/self/fd/{fd}"):
                os.close(fd)            # no /proc to link it from
                fd = None
        if fd is None:
            self.tmp = temp_name(self.real)
            try:
                os.unlink(self.tmp)     # left by an earlier process with this pid
            except FileNotFoundError:
                pass
            try:
                fd = os.open(self.tmp, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
            except OSError as err:
                self.tmp = None
                raise self._error("cannot create a temporary file in", err) from None
        fcntl.flock(fd, fcntl.LOCK_EX)
        self.fd = fd
        return self

    def _error(self, doing, err):
        return ConvertError(f"{self.path}: {doing} {self.real.parent} ({err.strerror or err})")

    @property
    def readable(self):
        """A path the unpublished file can be read back through."""
        return str(self.tmp) if self.tmp is not None else f"/proc/self/fd/{self.fd}"

    def write_text(self, text):
        data = text.encode("utf-8")
        self.size = len(data)
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view):]
        except OSError as err:
            if is_no_space(err):
                raise no_space([self]) from None
            raise ConvertError(f"{self.path}: cannot write ({err.strerror or err}); nothing was written") from None

    def _publish(self):
        """Put the file at its path; returns what ``_unpublish`` needs to undo that."""
        try:
            if not self.force:
                try:
                    self._link(self.real)
                except FileExistsError:
                    raise self._exists() from None
                except OSError as err:
                    if self.tmp is None or err.errno not in _NO_LINKS:
                        raise
                    # no hard links on this filesystem (FAT, some FUSE ones): a rename after a check, which
                    # leaves a concurrent run a moment to publish in between
                    if os.path.lexists(self.real):
                        raise self._exists() from None
                    os.rename(self.tmp, self.real)
                    self.tmp = None
                self._drop_name()
                return ("new", None)
            if self.tmp is None:
                name = temp_name(self.real)
                self._link(name)
                self.tmp = name
            backup = None
            if self.real.exists():
                backup = temp_name(self.real, "old")
                try:
                    if backup.exists():
                        os.unlink(backup)
                    os.link(self.real, backup)
                except OSError:
                    backup = "lost"     # no hard links here: a rollback cannot put the old file back
            os.rename(self.tmp, self.real)
            self.tmp = None
            return ("replaced", backup) if backup else ("new", None)
        except ConvertError:
            raise
        except OSError as err:
            raise ConvertError(f"{self.path}: cannot put the new file in place ({err.strerror or err})") from None

    def _exists(self):
        return ConvertError(f"{self.path}: already exists (another run may have written it meanwhile; use --force "
                            "to overwrite)")

    def _link(self, name):
        """Hard-link the temporary file (named, or anonymous through /proc/self/fd) as ``name``."""
        if self.tmp is not None:
            os.link(self.tmp, name)
            return
        # linkat(AT_SYMLINK_FOLLOW) on /proc/self/fd/N is how an O_TMPFILE file gets a name without
        # CAP_DAC_READ_SEARCH (open(2)); plain link() would link the /proc symlink itself
        proc = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.link(str(self.fd), name, src_dir_fd=proc, follow_symlinks=True)
        finally:
            os.close(proc)

    def _unpublish(self, how):
        kind, backup = how
        if backup == "lost":
            return
        if kind == "replaced":
            os.rename(backup, self.real)
        else:
            os.unlink(self.real)

    def _drop_name(self):
        if self.tmp is not None:
            try:
                os.unlink(self.tmp)
            except FileNotFoundError:
                pass
            self.tmp = None

    def close(self):
        """Forget the file: the anonymous one vanishes, the named one is removed (a no-op once published)."""
        self._drop_name()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def publish(outputs):
    """Publish every output or none: on any failure the ones already published are taken back."""
    done = []
    with deferred_signals():
        try:
            for output in outputs:
                done.append((output, output._publish()))
        except BaseException as err:
            for output, how in reversed(done):
                try:
                    output._unpublish(how)
                except OSError:
                    pass
            if isinstance(err, ConvertError):
                taken_back = f" ({_names([o for o, _ in done])} taken back)" if done else ""
                raise ConvertError(f"{err}; nothing was written{taken_back}") from None
            raise
        for _, (_, backup) in done:
            if backup not in (None, "lost"):
                try:
                    os.unlink(backup)
                except OSError:
                    pass        # a stale .old file, for the next run to remove
        for output in outputs:
            output.close()
        published.extend(o.path for o in outputs)


def outcome():
    """What an interrupted run tells the user about its outputs."""
    if not published:
        return "nothing was written"
    return "written before that: " + ", ".join(map(str, published))


def discard(outputs):
    """Remove the temporary files (a second Ctrl-C waits until they are gone)."""
    with deferred_signals():
        for output in outputs:
            output.close()


def check_space(outputs):
    """Refuse before writing when a filesystem has less room than the outputs it is to hold."""
    groups = {}
    for output in outputs:
        groups.setdefault(os.fstat(output.fd).st_dev, []).append(output)
    for group in groups.values():
        free = _free(group[0])
        need = sum(max(0, o.size - os.fstat(o.fd).st_size) for o in group)
        if need > free:
            raise ConvertError(f"{_names(group)}: needs {human_bytes(need)}, but {group[0].real.parent} has only "
                               f"{human_bytes(free)} free; nothing was written")


def no_space(outputs):
    """The error for ENOSPC / EDQUOT while writing: which output's filesystem filled up, and how much it needs."""
    full = [o for o in outputs if o.fd is not None and _free(o) < max(0, o.size - os.fstat(o.fd).st_size)]
    group = full or outputs
    need = sum(o.size for o in group)
    return ConvertError(f"{_names(group)}: no space left on the device while writing; {human_bytes(need)} are "
                        f"needed in {group[0].real.parent}; nothing was written")


def is_no_space(err):
    return isinstance(err, OSError) and err.errno in _NO_SPACE


def _free(output):
    st = os.fstatvfs(output.fd)
    return st.f_bavail * st.f_frsize


def _names(outputs):
    return str(outputs[0].path) + (f" (and {len(outputs) - 1} more files)" if len(outputs) > 1 else "")


_deferral = threading.local()
_pending = []
published = []      # the paths published since signals_cleaned_up began


def _handler(signum, frame):
    if getattr(_deferral, "depth", 0):
        _pending.append(signum)
        return
    _raise(signum)


def _raise(signum):
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum)


@contextmanager
def signals_cleaned_up():
    """SIGINT, SIGTERM and SIGHUP raise (KeyboardInterrupt / Terminated) while the block runs, so temporary
    files are removed on the way out. A signal that is ignored (``nohup``, background jobs) stays ignored."""
    published.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for signum in SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            previous[signum] = signal.signal(signum, _handler)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def deferred_signals():
    """A signal arriving inside the block is acted on when the block ends."""
    _deferral.depth = getattr(_deferral, "depth", 0) + 1
    try:
        yield
    finally:
        _deferral.depth -= 1
        if not _deferral.depth and _pending:
            signum = _pending[0]
            _pending.clear()
            _raise(signum)
