"""Reading the small input files beside a checkpoint (configs, tokenizers, strategies, metadata) as hostile input.

Regular files only (a FIFO or device would block or never end), with a size bound; JSON is parsed strictly (no
NaN / Infinity, no float overflow, no integer longer than Python's digit limit) and YAML with a bound on nesting and
on the values its aliases can expand to. Every problem is one error naming the file: a CheckpointError, or the
``error`` class given (gguf_out's ConvertError).
"""

import json
import math
import os
import stat

from .errors import CheckpointError

MAX_DEPTH = 200                 # nesting of JSON / YAML containers; real files stay below 20
MAX_YAML_NODES = 2_000_000      # values a YAML document may expand to through its aliases
SMALL = 64 << 20                # configs, metadata, strategy JSON
LARGE = 1 << 30                 # tokenizer files


def fail(error, path, what, offset=None):
    """Raise ``error`` for ``path``: CheckpointError (and subclasses) take (path, what, offset), others a message."""
    if isinstance(error, type) and issubclass(error, CheckpointError):
        raise error(path, what, offset)
    where = f" at byte {offset}" if offset is not None else ""
    raise error(f"{path}: {what}{where}")


def check_regular(path, error=CheckpointError, what="file"):
    """Raise unless ``path`` is a regular file (following symlinks); returns its os.stat_result."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        fail(error, path, f"{what} not found")
    except OSError as err:
        fail(error, path, f"cannot open {what}: {err.strerror or err}")
    if stat.S_ISDIR(st.st_mode):
        fail(error, path, f"is a directory, not a {what}")
    if not stat.S_ISREG(st.st_mode):
        fail(error, path, f"is not a regular file (a FIFO, device or socket); the {what} must be a file")
    return st


def open_regular(path, error=CheckpointError, what="file"):
    """An open binary file object for a regular file, refusing FIFOs, devices and directories without blocking."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        fail(error, path, f"{what} not found" if what != "checkpoint" else "cannot open: No such file or directory")
    except IsADirectoryError:
        fail(error, path, f"is a directory, not a {what}")
    except OSError as err:
        fail(error, path, f"cannot open {what}: {err.strerror or err}")
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            fail(error, path, f"is a directory, not a {what}")
        if not stat.S_ISREG(st.st_mode):
            fail(error, path, f"is not a regular file (a FIFO, device or socket); the {what} must be a file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path, error=CheckpointError, what="file", limit=SMALL):
    with open_regular(path, error, what) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            fail(error, path, f"{what} of {size} bytes is larger than the {limit >> 20} MiB this input may have")
        try:
            data = f.read(size + 1)     # read(n) allocates n bytes first: ask for what the file has
        except OSError as err:
            fail(error, path, f"cannot read {what}: {err.strerror or err}")
    if len(data) > size:
        fail(error, path, f"{what} grew while it was being read")
    return data


def read_text(path, error=CheckpointError, what="file", limit=SMALL):
    data = read_bytes(path, error, what, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        fail(error, path, f"{what} is not valid UTF-8", err.start)


def _first_line(err):
    return str(err).splitlines()[0].split("; use sys.set_int_max_str_digits")[0][:120]


def _reject_constant(name):
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text):
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} overflows a double")
    return value


def parse_json(text, path, error=CheckpointError, what=None, offset=None, nonfinite=False):
    """Strict JSON: no NaN / Infinity / overflowing floats (``nonfinite``: allowed, for files that only inform, like
    the loss scale in common.json), nesting at most MAX_DEPTH."""
    what = f"{what} is not" if what else "not"
    strict = {} if nonfinite else {"parse_constant": _reject_constant, "parse_float": _finite_float}
    try:
        data = json.loads(text, **strict)
    except json.JSONDecodeError as err:
        fail(error, path, f"{what} valid JSON ({err.msg} at line {err.lineno} column {err.colno})", offset)
    except RecursionError:
        fail(error, path, f"{what} valid JSON (nested too deeply)", offset)
    except ValueError as err:           # parse_constant / parse_float, or an integer beyond the digit limit
        fail(error, path, f"{what} valid JSON ({_first_line(err)})", offset)
    check_depth(data, path, error, offset=offset)
    return data


def load_json(path, error=CheckpointError, what="file", limit=SMALL, nonfinite=False):
    return parse_json(read_text(path, error, what, limit), path, error, nonfinite=nonfinite)


def parse_yaml(text, path, error=CheckpointError):
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        fail(error, path, f"not valid YAML ({str(err).splitlines()[0]})")
    except RecursionError:
        fail(error, path, "not valid YAML (nested too deeply)")
    except (ValueError, OverflowError) as err:    # e.g. an integer beyond Python's digit limit
        fail(error, path, f"not valid YAML ({_first_line(err)})")
    check_depth(data, path, error, MAX_YAML_NODES)
    return data


def check_depth(data, path, error=CheckpointError, max_nodes=None, offset=None):
    """Raise if containers nest deeper than MAX_DEPTH or (YAML aliases) expand to more than ``max_nodes`` values."""
    stack = [(data, 1)]
    seen = 0
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > MAX_DEPTH:
            fail(error, path, f"nested more than {MAX_DEPTH} levels deep", offset)
        seen += len(children)
        if max_nodes is not None and seen > max_nodes:
            fail(error, path, f"expands to more than {max_nodes} values (aliases nested in aliases?)")
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))


def present(path, error=CheckpointError, what="file"):
    """Whether an optional input file is there: False when nothing is at ``path``; an error when something that is
    not a regular file is (a FIFO, a directory, a dangling or looping symlink), rather than silently ignoring it."""
    if not os.path.lexists(path):
        return False
    check_regular(path, error, what)
    return True


def regular_entries(paths, error=CheckpointError, what="file"):
    """The paths (entries of a directory listing that match what is looked for) after refusing non-regular ones."""
    out = []
    for path in paths:
        check_regular(path, error, what)
        out.append(path)
    return out
