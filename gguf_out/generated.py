"""GGUF tensors that no checkpoint holds but llama.cpp needs: computed from the config.

A map lists them under ``"generated": {GGUF name: generator}``. A generator returns a small in-memory tensor
with the reader's Tensor interface (name, dtype, shape, rows(), array(), byte_ranges()), so planning, encoding
and writing treat it like any checkpoint tensor. The only one so far is Llama 3.1's ``rope_freqs.weight``.

Rope scaling is read here too, from either config spelling (mindformers-layouts.md §7.2):
MindFormers ``extend_method`` + ``scaling_factor`` (a dict for LLAMA3), or HF ``rope_scaling`` /
``rope_parameters`` (``{"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
"original_max_position_embeddings"}``).
"""

import math

import numpy as np

from msckpt.box import slice_array
from msckpt.dtypes import DTYPES

from .errors import ConvertError

NO_SCALING = (None, "none", "None", "default")


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


def rope_scaling(config, config_path):
    """The config's rope scaling as {"type", ...parameters}, or None when there is none."""
    method = config.get("extend_method")
    if method not in NO_SCALING:
        factor = config.get("scaling_factor")
        if method == "LLAMA3":
            if not isinstance(factor, dict):
                raise ConvertError(f"{config_path}: extend_method LLAMA3 needs scaling_factor as a dict "
                                   "(factor, low_freq_factor, high_freq_factor, original_max_position_embeddings)")
            return _llama3(factor, config, config_path, "scaling_factor")
        raise ConvertError(f"{config_path}: extend_method {method} is not supported yet (supported: None, LLAMA3)")
    for key in ("rope_scaling", "rope_parameters"):
        spec = config.get(key)
        if isinstance(spec, dict):
            kind = spec.get("rope_type", spec.get("type"))
            if kind in NO_SCALING:
                continue
            if kind == "llama3":
                return _llama3(spec, config, config_path, key)
            raise ConvertError(f"{config_path}: {key} type '{kind}' is not supported yet (supported: llama3)")
    return None


def _llama3(spec, config, config_path, key):
    # the dict's original_max_position_embeddings is what MindFormers and transformers use (llama.cpp's converter
    # reads a top-level key and falls back to 8192, which is Llama 3.1's own value)
    original = spec.get("original_max_position_embeddings", config.get("original_max_position_embeddings", 8192))
    out = {"type": "llama3", "factor": spec.get("factor", 8.0), "low_freq_factor": spec.get("low_freq_factor", 1.0),
           "high_freq_factor": spec.get("high_freq_factor", 4.0), "original_context_length": original}
    for name, value in out.items():
        if name != "type" and (not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0):
            raise ConvertError(f"{config_path}: {key}: {name} must be a positive number, not {value!r}")
    if out["high_freq_factor"] <= out["low_freq_factor"]:
        raise ConvertError(f"{config_path}: {key}: high_freq_factor must be greater than low_freq_factor")
    return out


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


def tensors(fmap, hp, config, config_path):
    """The map's generated tensors for this config (each generator may decide there is nothing to add)."""
    scaling = rope_scaling(config, config_path)
    made = []
    for name, generator in fmap.generated.items():
        if generator not in GENERATORS:
            raise ConvertError(f"{fmap.path}: unknown generator '{generator}' for {name} "
                               f"(known: {', '.join(GENERATORS)})")
        tensor = GENERATORS[generator](name, hp, scaling)
        if tensor is not None:
            made.append(tensor)
    if scaling is not None and not any(t.name == "rope_freqs.weight" for t in made):
        raise ConvertError(f"{config_path}: {scaling['type']} rope scaling is not supported for the map "
                           f"'{fmap.family}' (llama.cpp arch {fmap.arch})")
    return made
