"""``ms2gguf check``: tensor values that are not finite, found by streaming the data section (issue 18).

Float tensors (F32, F16, BF16, F64) are scanned whole; quantized ones by their block scales (the f16 ``d`` and
``dmin`` / ``m`` fields, whose position each ggml block layout fixes). A NaN or infinite scale or weight makes the
model's logits NaN; llama.cpp loads such a file without a word.
"""

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

_CHUNK = 32 << 20
_FLOATS = {T.F32: np.float32, T.F16: np.float16, T.F64: np.float64}
# byte offsets of the f16 scale fields inside one block
_SCALES = {T.Q4_0: (0,), T.Q4_1: (0, 2), T.Q5_0: (0,), T.Q5_1: (0, 2), T.Q8_0: (0,), T.Q2_K: (80, 82),
           T.Q3_K: (108,), T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,)}


def _count(data, ggml_type):
    if ggml_type in _FLOATS:
        values = np.frombuffer(data, _FLOATS[ggml_type])
        return int(values.size - np.count_nonzero(np.isfinite(values)))
    if ggml_type == T.BF16:
        return int(np.count_nonzero((np.frombuffer(data, np.uint16) & 0x7F80) == 0x7F80))
    if ggml_type in _SCALES:
        size = GGML_QUANT_SIZES[ggml_type][1]
        blocks = np.frombuffer(data, np.uint8).reshape(-1, size)
        bad = 0
        for offset in _SCALES[ggml_type]:
            half = blocks[:, offset:offset + 2].copy().view(np.uint16)
            bad += int(np.count_nonzero((half & 0x7C00) == 0x7C00))
        return bad
    return 0


def scan(buf, report, data_start):
    """Add an error to ``report`` for every tensor with non-finite values (tensor infos already checked)."""
    for t in report.tensors:
        try:
            ggml_type = T(t.ggml_type)
        except ValueError:
            continue
        if t.nbytes is None or (ggml_type not in _FLOATS and ggml_type != T.BF16 and ggml_type not in _SCALES):
            continue
        start = data_start + t.offset
        if start + t.nbytes > len(buf):
            continue                                    # reported as truncated
        unit = GGML_QUANT_SIZES[ggml_type][1]
        step = max(unit, _CHUNK - _CHUNK % unit)
        bad = 0
        for offset in range(start, start + t.nbytes, step):
            bad += _count(buf[offset:min(offset + step, start + t.nbytes)], ggml_type)
        if bad:
            what = "value" if ggml_type in _FLOATS or ggml_type == T.BF16 else "block scale"
            what += "s" if bad > 1 else ""
            report.error("values", f"tensor '{t.name}': {bad} {what} {'are' if bad > 1 else 'is'} not finite (NaN "
                                   "or infinite); llama.cpp would compute NaN logits")
