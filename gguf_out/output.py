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


def escaped(value):
    """A copy of a JSON-like value with every string (keys too) escaped."""
    if isinstance(value, str):
        return escape(value)
    if isinstance(value, dict):
        return {escaped(k) if isinstance(k, str) else k: escaped(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [escaped(v) for v in value]
    return value


def strict_json(value):
    """A copy of a JSON-like value in which NaN and infinities (which JSON cannot hold) are strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


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
