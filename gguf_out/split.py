"""Split GGUF sets: the plan (gguf-py's), the file names and the split keys (format: ecosystem.md §2a).

gguf-py's ``GGUFWriter(split_max_tensors=, split_max_size=)`` starts a new split before a tensor when the
current split already holds ``split_max_tensors`` tensors, or when its unpadded tensor bytes plus the tensor's
would exceed ``split_max_size``; every split holds at least one tensor. All metadata goes into the first split,
then the three split keys (``split.no`` u16 = K-1, ``split.count`` u16, ``split.tensors.count`` i32); the other
splits hold only the split keys. A one-split plan is written as OUT itself, without split keys.
"""

import re
from pathlib import Path

from gguf import GGUFValueType, Keys

from .errors import ConvertError
from .writer import KV

NAME_FORMAT = "{}-{:05d}-of-{:05d}.gguf"        # gguf-py SHARD_NAME_FORMAT, llama.cpp llama_split_path
NAME_PATTERN = re.compile(r"^(.*)-(\d{5})-of-(\d{5})\.gguf$")
KEY_NO, KEY_COUNT, KEY_TENSORS = Keys.Split.LLM_KV_SPLIT_NO, Keys.Split.LLM_KV_SPLIT_COUNT, \
    Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT
KEY_TYPES = {KEY_NO: GGUFValueType.UINT16, KEY_COUNT: GGUFValueType.UINT16, KEY_TENSORS: GGUFValueType.INT32}
MAX_SPLITS = 0xFFFF                               # split.count is a u16
_UNITS = {"": 1, "K": 1000, "M": 1000 ** 2, "G": 1000 ** 3, "T": 1000 ** 4}


def parse_size(text):
    """``--split-max-size``: bytes, or a number with K, M, G or T (decimal, as gguf-split and
    convert_hf_to_gguf.py: 500M = 500 000 000 bytes)."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)B?\s*", str(text), re.IGNORECASE)
    if not m or int(m.group(1)) == 0:
        raise ValueError(f"'{text}' is not a size such as 500M or 50G (decimal units K, M, G, T)")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


def plan(nbytes, max_size=0, max_tensors=0):
    """[(first, stop)] tensor index ranges of each split, for tensors of ``nbytes`` (unpadded) in order."""
    groups = []
    size = count = 0
    for i, n in enumerate(nbytes):
        if count and ((max_tensors and count >= max_tensors) or (max_size and size + n > max_size)):
            groups.append((groups[-1][1] if groups else 0, i))
            size = count = 0
        size += n
        count += 1
    groups.append((groups[-1][1] if groups else 0, len(nbytes)))
    if len(groups) > MAX_SPLITS:
        raise ConvertError(f"the split plan has {len(groups)} files; split.count is a u16 (at most {MAX_SPLITS}): "
                           "raise --split-max-size / --split-max-tensors")
    return groups


def names(path, count):
    """The files of a ``count``-split set for OUT ``path`` (OUT itself when there is one split)."""
    path = Path(path)
    if count == 1:
        return [path]
    return [path.with_name(NAME_FORMAT.format(path.stem, k, count)) for k in range(1, count + 1)]


def keys(index, count, total_tensors):
    """The split keys of split ``index`` (0-based) of ``count``, as gguf-py writes them."""
    return [(KEY_NO, KV(GGUFValueType.UINT16, index)), (KEY_COUNT, KV(GGUFValueType.UINT16, count)),
            (KEY_TENSORS, KV(GGUFValueType.INT32, total_tensors))]


def parse_name(path):
    """(prefix, K, N) of a name ending in -0000K-of-0000N.gguf, else None."""
    m = NAME_PATTERN.match(Path(path).name)
    return (m.group(1), int(m.group(2)), int(m.group(3))) if m else None
