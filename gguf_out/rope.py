"""Rope scaling: read from either config spelling, and carried into the GGUF the way the architecture allows.

Spellings (mindformers-layouts.md §7.2): MindFormers ``extend_method`` + ``scaling_factor`` (a dict for LLAMA3), or
HF ``rope_scaling`` / ``rope_parameters`` (``{"rope_type": "llama3" | "yarn", "factor", ...}``). Llama 3.1 scaling
becomes a generated ``rope_freqs`` tensor (generated.py); YaRN becomes metadata keys for the archs whose map lists
"yarn" under ``rope_scaling`` (DeepSeek's deepseek2; moe-families.md §4.2-4.3).
"""

import math

from .errors import ConvertError

NO_SCALING = (None, "none", "None", "default")
# llama.cpp's YaRN ramp uses these betas whatever the file says (it ignores rope.scaling.yarn_beta_*)
LLAMA_CPP_YARN_BETAS = (32.0, 1.0)


def rope_scaling(config, config_path, yarn_defaults=None):
    """The config's rope scaling as {"type", ...parameters}, or None when there is none. ``yarn_defaults``: the
    YaRN parameters the family's network uses when the config leaves them out (the map's rope_scaling.defaults)."""
    method = config.get("extend_method")
    if method not in NO_SCALING:
        factor = config.get("scaling_factor")
        if method == "LLAMA3":
            if not isinstance(factor, dict):
                raise ConvertError(f"{config_path}: extend_method LLAMA3 needs scaling_factor as a dict "
                                   "(factor, low_freq_factor, high_freq_factor, original_max_position_embeddings)")
            return _llama3(factor, config, config_path, "scaling_factor")
        if method == "YARN":        # MindFormers' FreqsMgr needs all six YaRN keys in the dict (no defaults)
            if not isinstance(factor, dict):
                raise ConvertError(f"{config_path}: extend_method YARN needs scaling_factor as a dict (factor, "
                                   "original_max_position_embeddings, beta_fast, beta_slow, mscale, mscale_all_dim)")
            return _yarn(factor, config, config_path, "scaling_factor")
        raise ConvertError(f"{config_path}: extend_method {method} is not supported yet (supported: None, LLAMA3, "
                           "YARN)")
    for key in ("rope_scaling", "rope_parameters"):
        spec = config.get(key)
        if isinstance(spec, dict):
            kind = spec.get("rope_type", spec.get("type"))
            if kind in NO_SCALING:
                continue
            if kind == "llama3":
                return _llama3(spec, config, config_path, key)
            if kind == "yarn":
                return _yarn({**(yarn_defaults or {}), **spec}, config, config_path, key)
            raise ConvertError(f"{config_path}: {key} type '{kind}' is not supported yet (supported: llama3, yarn)")
    return None


def _llama3(spec, config, config_path, key):
    # the dict's original_max_position_embeddings is what MindFormers and transformers use (llama.cpp's converter
    # reads a top-level key and falls back to 8192, which is Llama 3.1's own value)
    original = spec.get("original_max_position_embeddings", config.get("original_max_position_embeddings", 8192))
    out = {"type": "llama3", "factor": spec.get("factor", 8.0), "low_freq_factor": spec.get("low_freq_factor", 1.0),
           "high_freq_factor": spec.get("high_freq_factor", 4.0), "original_context_length": original}
    for name, value in out.items():
        if name != "type" and not _positive(value):
            raise ConvertError(f"{config_path}: {key}: {name} must be a positive finite number, not {value!r}")
    _context(out, config_path, key)
    if out["high_freq_factor"] <= out["low_freq_factor"]:
        raise ConvertError(f"{config_path}: {key}: high_freq_factor must be greater than low_freq_factor")
    return out


def _positive(value):
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
            and math.isfinite(float(value) if abs(value) < 1e308 else math.inf))


def _context(out, config_path, key):
    value = out["original_context_length"]
    if value != int(value) or not 0 < value < 1 << 32:
        raise ConvertError(f"{config_path}: {key}: original_max_position_embeddings must be a whole number below 2^32, "
                           f"not {value!r}")


def _number(spec, name, config_path, key, default=None):
    value = spec.get(name, default)
    if not _positive(value):
        raise ConvertError(f"{config_path}: {key}: {name} must be a positive finite number, not {value!r}")
    return float(value)


def _yarn(spec, config, config_path, key):
    """YaRN as MindFormers applies it (TransformerConfig: original_max_position_embeddings, else the model's
    seq_length; the other parameters from the dict, else the family's defaults, else HF's)."""
    original = spec.get("original_max_position_embeddings") or config.get("seq_length")
    out = {"type": "yarn", "factor": _number(spec, "factor", config_path, key),
           "original_context_length": _number({"o": original}, "o", config_path,
                                               f"{key}: original_max_position_embeddings (or seq_length)"),
           "beta_fast": _number(spec, "beta_fast", config_path, key, 32.0),
           "beta_slow": _number(spec, "beta_slow", config_path, key, 1.0),
           "mscale": _number(spec, "mscale", config_path, key, 1.0),
           "mscale_all_dim": _number(spec, "mscale_all_dim", config_path, key, 1.0)}
    _context(out, config_path, key)
    out["original_context_length"] = int(out["original_context_length"])
    return out


def apply(fmap, hp, scaling, config_path, allow_inexact):
    """Put the scaling the map carries as metadata into ``hp`` (rope_scaling_* and yarn_log_multiplier); returns
    warnings. Scaling that neither a generated tensor nor the map's metadata can carry is an error, and so is none
    at all when the map says why (``missing``; with ``missing_if``, only when that flag of the names is set)."""
    spec = fmap.rope_scaling
    if scaling is None:
        if spec.get("missing") and hp.get(spec.get("missing_if"), True):
            raise ConvertError(f"{config_path}: no rope_scaling: {spec['missing']}")
        return []
    kind = scaling["type"]
    if kind not in spec.get("types", []):
        if kind == "llama3" and "llama3_rope_freqs" in fmap.generated.values():
            return []
        raise ConvertError(f"{config_path}: {kind} rope scaling is not supported for the map '{fmap.family}' "
                           f"(llama.cpp arch {fmap.arch})")
    hp.put("rope_scaling_type", kind, f"{config_path}: rope scaling")
    hp.put("rope_scaling_factor", scaling["factor"], f"{config_path}: rope scaling factor")
    hp.put("rope_scaling_original_context_length", scaling["original_context_length"],
           f"{config_path}: rope scaling original_max_position_embeddings")
    problems = []
    if kind == "yarn":
        # llama.cpp's attention factor from yarn_log_multiplier reproduces the softmax scale (0.1 mscale_all_dim
        # ln(factor) + 1)^2 when mscale == mscale_all_dim (then the cos/sin scaling is 1): moe-families.md §4.3
        hp.put("yarn_log_multiplier", 0.1 * scaling["mscale_all_dim"], f"{config_path}: 0.1 x mscale_all_dim")
        betas = (scaling["beta_fast"], scaling["beta_slow"])
        if betas != LLAMA_CPP_YARN_BETAS:
            problems.append(f"rope_scaling beta_fast / beta_slow are {betas[0]:g} / {betas[1]:g}: llama.cpp's "
                            f"{fmap.arch} always uses 32 / 1 for the YaRN frequency ramp, so some rotary "
                            "frequencies would differ")
        if scaling["mscale"] != scaling["mscale_all_dim"]:
            problems.append(f"rope_scaling mscale ({scaling['mscale']:g}) differs from mscale_all_dim "
                            f"({scaling['mscale_all_dim']:g}): MindFormers then scales the rotary angles and the "
                            "attention softmax in ways llama.cpp's YaRN does not reproduce")
    warnings = []
    for problem in problems:
        if not allow_inexact:
            raise ConvertError(f"{config_path}: {problem}; pass --allow-inexact to convert anyway")
        warnings.append(f"{config_path}: {problem} (converting anyway: --allow-inexact)")
    return warnings
