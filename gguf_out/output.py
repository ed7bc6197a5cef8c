"""What ms2gguf prints: text from files escaped, strict JSON, progress that suits a terminal or a log."""

import math
import re
import sys
import time

# C0 / C1 controls, DEL, and the bidirectional overrides and isolates (they can reorder what a terminal shows)
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")


def _escape_char(match):
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text):
    """``text`` with every control character (newline included) shown as an escape, so a name read from a file
    cannot clear the screen, move the cursor or forge an output line."""
    return _UNSAFE.sub(_escape_char, str(text))


def escape_lines(text):
    """Like escape, but keeps the line breaks of output we format ourselves."""
    return "\n".join(escape(line) for line in str(text).split("\n"))


def _rewrite(value, leaf, keys=None):
    """Apply ``leaf`` to every non-container value (and ``keys`` to dict keys) of a JSON-like value, in place where
    it is a dict or list (the description of a checkpoint with a million entries must not be copied)."""
    if isinstance(value, dict):
        for key in list(value):
            new_key = keys(key) if keys is not None and isinstance(key, str) else key
            item = _rewrite(value[key], leaf, keys)
            if new_key != key:
                del value[key]
            value[new_key] = item
        return value
    if isinstance(value, list):
        for i, item in enumerate(value):
            value[i] = _rewrite(item, leaf, keys)
        return value
    if isinstance(value, tuple):
        return [_rewrite(item, leaf, keys) for item in value]
    return leaf(value)


def escaped(value):
    """A JSON-like value with every string (keys too) escaped (in place)."""
    return _rewrite(value, lambda v: escape(v) if isinstance(v, str) else v, escape)


def _strict_number(value):
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def strict_json(value):
    """A JSON-like value in which NaN and infinities (which JSON cannot hold) are strings (in place)."""
    return _rewrite(value, _strict_number)


def write_json(value, stream=None):
    """Strict JSON (no NaN / Infinity), written in pieces: a large description is never one string in memory."""
    import json

    stream = stream or sys.stdout
    pending = []
    for chunk in json.JSONEncoder(indent=1, default=str, allow_nan=False).iterencode(strict_json(value)):
        pending.append(chunk)
        if len(pending) >= 65536:
            stream.write("".join(pending))
            pending = []
    pending.append("\n")
    stream.write("".join(pending))


class PlainProgress:
    """tqdm's interface for a stream that is not a terminal: one plain line per stage at most every ``every``
    seconds (and none for a stage shorter than that), no carriage-return frames."""

    def __init__(self, total, desc, stream=None, every=30.0):
        self.total, self.desc, self.n = total, desc, 0
        self.stream = stream or sys.stderr
        self.every = every
        self.last = time.monotonic()

    def update(self, n):
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
            print(f"ms2gguf: {self.desc}: {self.n >> 20} of {self.total >> 20} MiB{share}", file=self.stream,
                  flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class NoProgress(PlainProgress):
    def update(self, n):
        self.n += n


def progress(total, desc, quiet):
    """A progress bar on a terminal, plain lines in a log, nothing with -q."""
    if quiet:
        return NoProgress(total, desc)
    if not sys.stderr.isatty():
        return PlainProgress(total, desc)
    from tqdm import tqdm
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, file=sys.stderr, leave=False)
