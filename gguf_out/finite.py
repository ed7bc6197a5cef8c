"""Weights that are not finite, or do not fit F16, found while streaming (issue 18).

By default either is an error naming the tensor and the count: a NaN weight makes every logit NaN, and an f32
weight beyond ±65504 becomes ±inf in an F16 file, and neither is visible until the model is run. ``--allow-nonfinite``
keeps non-finite values and ``--clamp-f16`` clamps to ±65504 what F16 cannot hold; each is reported with its count.
The scan is one pass over each band (or, for byte-for-byte copies, over the bytes as they are streamed).
"""

import numpy as np
from gguf import GGMLQuantizationType as T

from .errors import ConvertError

F16_MAX = 65504.0
F16_INF = 65520.0          # from this magnitude on, rounding to F16 gives infinity (below it: 65504 at most)
_BF16_INF = 0x4780         # bfloat16 magnitude bits of 65536, the first bfloat16 value beyond F16
_FLOATS = {"Float16": np.float16, "Float32": np.float32, "Float64": np.float64}


def _range(block):
    """(min, max) of a float block; NaN if any value is NaN (a reduction is the cheapest full pass)."""
    if not block.size:
        return 0.0, 0.0
    return float(block.min()), float(block.max())


def nonfinite(block, dtype_name):
    """How many values of a block (in the checkpoint dtype's numpy form) are NaN or infinite."""
    if dtype_name == "BFloat16":                    # raw uint16: exponent bits all ones
        return int(np.count_nonzero((block & 0x7F80) == 0x7F80))
    if dtype_name in _FLOATS:
        low, high = _range(block)
        if np.isfinite(low) and np.isfinite(high):
            return 0
        return int(block.size - np.count_nonzero(np.isfinite(block)))
    return 0


def beyond_f16(block, dtype_name):
    """How many finite values of a block F16 cannot hold (rounded to F16 they would become ±inf)."""
    if dtype_name == "BFloat16":                    # raw uint16: the magnitude bits order like the magnitudes
        magnitude = block & 0x7FFF
        if not magnitude.size or int(magnitude.max()) < _BF16_INF:
            return 0
        return int(np.count_nonzero((magnitude >= _BF16_INF) & (magnitude < 0x7F80)))
    if dtype_name not in ("Float32", "Float64"):
        return 0
    low, high = _range(block)
    if -F16_INF < low and high < F16_INF:
        return 0
    magnitude = np.abs(block)
    return int(np.count_nonzero(magnitude >= F16_INF) - np.count_nonzero(np.isinf(magnitude)))


class ValueCheck:
    """Counts per output tensor; ``allow_nonfinite`` / ``clamp_f16`` as the options say; ``where``: the checkpoint."""

    def __init__(self, where, allow_nonfinite=False, clamp_f16=False):
        self.where, self.allow_nonfinite, self.clamp_f16 = where, allow_nonfinite, clamp_f16
        self.kept, self.clamped = {}, {}          # output name -> count

    def _nonfinite(self, out, count):
        if not count:
            return
        if not self.allow_nonfinite:
            raise ConvertError(f"{self.where}: tensor '{out.source.name}' (GGUF {out.name}) has {count} "
                               f"value{'s' if count > 1 else ''} that {'are' if count > 1 else 'is'} not finite (NaN "
                               "or infinite); --allow-nonfinite keeps them")
        self.kept[out.name] = self.kept.get(out.name, 0) + count

    def raw(self, out, data, dtype_name):
        """Bytes copied as they are (the output type is the checkpoint's)."""
        if dtype_name == "BFloat16":
            self._nonfinite(out, nonfinite(np.frombuffer(data, np.uint16), dtype_name))
        elif dtype_name in _FLOATS:
            self._nonfinite(out, nonfinite(np.frombuffer(data, _FLOATS[dtype_name]), dtype_name))

    def band(self, out, block, dtype_name, ggml_types):
        """Check a band before it is encoded; returns {ggml type: (block, dtype name)} to encode (clamped for F16
        when asked)."""
        self._nonfinite(out, nonfinite(block, dtype_name))
        encoded = {t: (block, dtype_name) for t in ggml_types}
        if T.F16 in encoded:
            count = beyond_f16(block, dtype_name)
            if count and not self.clamp_f16:
                raise ConvertError(f"{self.where}: tensor '{out.source.name}' (GGUF {out.name}) has {count} "
                                   f"value{'s' if count > 1 else ''} beyond ±65504, which F16 cannot hold (they would "
                                   "become infinite); --clamp-f16 clamps them to ±65504, or use --outtype bf16 or "
                                   "f32")
            if count:
                self.clamped[out.name] = self.clamped.get(out.name, 0) + count
                from .encode import to_float32
                encoded[T.F16] = (np.clip(to_float32(block, dtype_name), -F16_MAX, F16_MAX).astype(np.float32),
                                  "Float32")
        return encoded

    def warnings(self):
        out = []
        for what, counts in (("non-finite values kept (--allow-nonfinite)", self.kept),
                             ("values clamped to ±65504 for F16 (--clamp-f16)", self.clamped)):
            if counts:
                names = ", ".join(list(counts)[:3]) + (f" and {len(counts) - 3} more" if len(counts) > 3 else "")
                out.append(f"{self.where}: {sum(counts.values())} {what} in {len(counts)} tensor"
                           f"{'s' if len(counts) > 1 else ''} ({names})")
        return out
