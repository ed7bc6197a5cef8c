"""GGUF tensors that no checkpoint holds but llama.cpp needs: computed from the config.

A map lists them under ``"generated": {GGUF name: generator}``. A generator returns a small in-memory tensor
with the reader's Tensor interface (name, dtype, shape, rows(), array(), byte_ranges()), so planning, encoding
and writing treat it like any checkpoint tensor. The only one so far is Llama 3.1's ``rope_freqs.weight``.

Rope scaling itself is read by gguf_out/rope.py.
"""

import math

import numpy as np

from msckpt.box import slice_array
from msckpt.dtypes import DTYPES

from .errors import ConvertError

class GeneratedTensor:
    """A float32 tensor computed in memory, readable like a checkpoint tensor."""

    kind = "tensor"

    def __init__(self, name, values, what):
        self.name = name              # shown in --dry-run / --verbose where a checkpoint name would be
        self.dtype = DTYPES["Float32"]
        self._values = np.ascontiguousarray(values, dtype=np.float32)
        self.shape = self._values.shape
        self.what = what

    def array(self):
        return self._values

    def rows(self, start, stop):
        return self._values[start:stop]

    def read_box(self, box):
        return slice_array(self._values, box).copy()

    def byte_ranges(self):
        return None                   # not in any file: never raw-copied


def llama3_rope_freqs(name, hp, scaling):
    """llama.cpp's rope_freqs for Llama 3.1 scaling: one divisor per frequency (convert_hf_to_gguf.py's
    LlamaModel.generate_extra_tensors; the same numbers as MindFormers' FreqsMgr and transformers'
    _compute_llama3_parameters): 1 for short wavelengths, ``factor`` for long ones, a smooth blend between."""
    if scaling is None or scaling["type"] != "llama3":
        return None
    dim, base = int(hp["head_dim"]), float(hp["rope_theta"])
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    original = scaling["original_context_length"]
    low_wavelen, high_wavelen = original / low, original / high
    divisors = []
    for freq in 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim)):
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            divisors.append(1.0)
        elif wavelen > low_wavelen:
            divisors.append(factor)
        else:
            smooth = (original / wavelen - low) / (high - low)
            divisors.append(1 / ((1 - smooth) / factor + smooth))
    what = (f"Llama 3.1 rope scaling (factor {factor}, low/high_freq_factor {low}/{high}, original context "
            f"{original})")
    return GeneratedTensor(name, divisors, what)


GENERATORS = {"llama3_rope_freqs": llama3_rope_freqs}


def tensors(fmap, hp, scaling):
    """The map's generated tensors for this config (each generator may decide there is nothing to add).
    ``scaling``: the config's rope scaling (rope.rope_scaling)."""
    made = []
    for name, generator in fmap.generated.items():
        if generator not in GENERATORS:
            raise ConvertError(f"{fmap.path}: unknown generator '{generator}' for {name} "
                               f"(known: {', '.join(GENERATORS)})")
        tensor = GENERATORS[generator](name, hp, scaling)
        if tensor is not None:
            made.append(tensor)
    return made
