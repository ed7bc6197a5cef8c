"""Model hyperparameters from a MindFormers yaml or an HF config.json, cross-checked with the tensors.

The map names, for each canonical hyperparameter, the config keys that may carry it (MindFormers
``model.model_config`` and HF spellings); everything else here is arithmetic (mindformers-layouts.md §7).
"""

import math
from pathlib import Path

from msckpt import safeio

from .errors import ConvertError

CONFIG_NAMES = ("config.yaml", "config.json")


def find_config(ckpt_path):
    """A config file beside the checkpoint (inside it, for a checkpoint directory): config.yaml/config.json,
    else the only *.yaml there."""
    path = Path(ckpt_path).resolve()
    folder = path if path.is_dir() else path.parent
    for name in CONFIG_NAMES:
        if (folder / name).is_file():
            return folder / name
    yamls = sorted(folder.glob("*.yaml")) + sorted(folder.glob("*.yml"))
    if len(yamls) == 1:
        return yamls[0]
    if len(yamls) > 1:
        raise ConvertError(f"{folder}: several yaml files ({', '.join(p.name for p in yamls)}); "
                           "choose one with --config")
    return None


def read_config(path):
    """The flat dict of model settings in a MindFormers yaml (model.model_config) or an HF config.json."""
    path = Path(path)
    text = safeio.read_text(path, ConvertError, "config file")
    if path.suffix == ".json":
        data = safeio.parse_json(text, path, ConvertError)
    else:
        data = safeio.parse_yaml(text, path, ConvertError)
    if not isinstance(data, dict):
        raise ConvertError(f"{path}: expected a mapping at the top level")
    model = data.get("model")
    if isinstance(model, dict):         # MindFormers yaml
        config = model.get("model_config")
        if not isinstance(config, dict):
            raise ConvertError(f"{path}: MindFormers yaml without model.model_config")
        hf_config = _pretrained_config(path, data, config)
        merged = {**hf_config, **config} if hf_config else dict(config)
        if isinstance(data.get("moe_config"), dict) and "moe_config" not in merged:
            merged["moe_config"] = data["moe_config"]     # legacy MoE models: a top-level section of the yaml
        return merged
    return _flatten_rope_parameters(data)   # HF config.json (or a bare model_config)


def _pretrained_config(yaml_path, data, model_config):
    """An mcore yaml (MindFormers 1.6+) holds only layout and runtime settings; the architecture is in the HF
    config.json of ``pretrained_model_dir`` (mindformers-layouts.md §7.3), or beside the yaml."""
    folder = data.get("pretrained_model_dir") or model_config.get("pretrained_model_dir")
    candidates = _pretrained_candidates(yaml_path, data, model_config)
    if data.get("use_legacy", True) is not False and not folder:
        return None                     # a legacy yaml is complete by itself
    for candidate in candidates:
        if candidate.is_file():
            return read_config(candidate)
    if "hidden_size" not in model_config:
        raise ConvertError(f"{yaml_path}: an mcore yaml without the model's architecture, and no HF config.json "
                           f"in pretrained_model_dir ({folder}) or beside it; pass --config config.json")
    return None


def _pretrained_candidates(yaml_path, data, model_config):
    folder = data.get("pretrained_model_dir") or model_config.get("pretrained_model_dir")
    candidates = [Path(yaml_path).parent / "config.json"]
    if isinstance(folder, str) and folder:
        candidates.insert(0, (Path(yaml_path).parent / folder / "config.json"))
    return candidates


def config_files(path):
    """The files reading the config at ``path`` may open: itself, and for a MindFormers yaml the HF config.json
    candidates of _pretrained_config (no output may be one of them)."""
    files = [Path(path)]
    if files[0].suffix == ".json":
        return files
    try:
        data = safeio.parse_yaml(safeio.read_text(files[0], ConvertError, "config file"), files[0], ConvertError)
    except ConvertError:
        return files        # read_config says what is wrong with it
    model = data.get("model") if isinstance(data, dict) else None
    if isinstance(model, dict) and isinstance(model.get("model_config"), dict):
        files += _pretrained_candidates(path, data, model["model_config"])
    return files


def _flatten_rope_parameters(config):
    """transformers 5 writes rope_theta (and partial_rotary_factor) inside "rope_parameters"; older configs keep them
    at the top level."""
    rope = config.get("rope_parameters")
    if not isinstance(rope, dict):
        return config
    lifted = {k: rope[k] for k in ("rope_theta", "partial_rotary_factor") if k not in config and k in rope}
    return {**config, **lifted} if lifted else config


def _llama_ffn(hidden_size, multiple_of, ffn_dim_multiplier):
    # LlamaFeedForward: hidden_dim = 4H, optional multiplier, 2/3, rounded up to multiple_of (§7.2)
    hidden_dim = 4 * hidden_size
    if ffn_dim_multiplier is not None:
        hidden_dim = int((ffn_dim_multiplier + 0.01) * hidden_dim)
    hidden_dim = int(2 * hidden_dim / 3)
    return multiple_of * math.ceil(hidden_dim / multiple_of)


class HParams(dict):
    """Canonical hyperparameters; ``source[name]`` tells where each value came from."""

    def __init__(self):
        super().__init__()
        self.source = {}

    def put(self, name, value, source):
        self[name] = value
        self.source[name] = source


def _from_config(config, entry):
    """(value, where) of one config key entry of a map, or None: a key (dotted keys reach into sections), or
    {"key": k, "times": x} (a value in other units, e.g. ChatGLM's rope_ratio for rope_theta / 10000) with an optional
    "when": flag (only if the config does not set that flag false, e.g. multi_query_group_num only with
    multi_query_attention)."""
    if isinstance(entry, str):
        entry = {"key": entry}
    value = lookup(config, entry["key"])
    if value is None or ("when" in entry and lookup(config, entry["when"]) is False):
        return None
    if "times" in entry:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConvertError(f"{entry['key']} is {value!r}; it must be a number")
        value = value * entry["times"]
    return value, entry["key"] + (f" x {entry['times']:g}" if "times" in entry else "")


# What each canonical value may be (anything else in a config is an error naming the key): counts that size
# tensors or drive loops are integers in [low, high]; floats must be finite and, where it matters, positive.
_U32 = (1 << 32) - 1
COUNTS = {"hidden_size": 1, "num_heads": 1, "num_kv_heads": 1, "num_layers": 1, "head_dim": 1, "vocab_size": 1,
          "intermediate_size": 1, "context_length": 1, "multiple_of": 1, "expert_ffn_size": 1, "n_expert": 1,
          "n_expert_used": 1, "kv_lora_rank": 1, "qk_nope_head_dim": 1, "qk_rope_head_dim": 1, "v_head_dim": 1,
          "n_group": 1, "topk_group": 1, "q_lora_rank": 0, "n_shared_experts": 0, "leading_dense_blocks": 0,
          "nextn_layers": 0}
COUNT_LIMITS = {"num_layers": 1 << 16, "num_heads": 1 << 16, "num_kv_heads": 1 << 16, "n_expert": 1 << 16,
                "n_expert_used": 1 << 16, "n_group": 1 << 16, "topk_group": 1 << 16}
POSITIVE_FLOATS = {"rms_norm_eps": 1.0, "rope_theta": 3.4e38, "routed_scaling_factor": 1e6,
                   "ffn_dim_multiplier": 1e3}
FRACTIONS = {"rope_fraction"}


def _checked(name, value, where):
    """The config value of a canonical hyperparameter, validated (ConvertError naming the key otherwise)."""
    if value is None or isinstance(value, (str, bool)) and name not in COUNTS and name not in POSITIVE_FLOATS \
            and name not in FRACTIONS:
        return value                        # flags and names (tie_word_embeddings, score_function, ...)
    if name in COUNTS:
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConvertError(f"{where} is {_shown(value)}; it must be an integer")
        high = COUNT_LIMITS.get(name, _U32)
        if not COUNTS[name] <= value <= high:
            raise ConvertError(f"{where} is {_shown(value)}; it must be between {COUNTS[name]} and {high}")
        return value
    if name in POSITIVE_FLOATS or name in FRACTIONS:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConvertError(f"{where} is {_shown(value)}; it must be a number")
        try:
            value = float(value)
        except OverflowError:
            value = math.inf
        high = POSITIVE_FLOATS.get(name, 1.0)
        if not (math.isfinite(value) and 0 < value <= high):
            raise ConvertError(f"{where} is {_shown(value)}; it must be a finite number above 0 and at most {high:g}")
        return value
    return value


def _shown(value):
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:30]}... ({len(text)} characters)"


def resolve(family_map, config, config_path):
    """Canonical values from the config via the map's key lists, defaults and derivations."""
    hp = HParams()
    for name, keys in family_map.config_keys.items():
        for entry in keys:
            found = _from_config(config, entry)
            if found is not None:
                where = f"{config_path}: {found[1]}"
                hp.put(name, _checked(name, found[0], where), where)
                break
        else:
            if name in family_map.defaults:
                hp.put(name, family_map.defaults[name], "default")
    for name in ("num_heads",):
        if name not in hp:
            raise ConvertError(f"{config_path}: no {name} ({' or '.join(family_map.config_keys.get(name, []))})")
    if "num_kv_heads" not in hp:
        hp.put("num_kv_heads", hp["num_heads"], NO_GQA)
    return hp


NO_GQA = "= num_heads (no GQA setting)"


def _kv_heads_from_shapes(hp, observed):
    """When the config does not say how many KV heads there are, the K or fused QKV width tells."""
    if hp.source.get("num_kv_heads") != NO_GQA:
        return
    head_dim = int(hp["head_dim"])
    if "kv_width" in observed:
        value, what = observed["kv_width"]
        if value % head_dim == 0:
            hp.put("num_kv_heads", value // head_dim, f"tensor shapes ({what} / head_dim)")
    elif "qkv_width" in observed:
        value, what = observed["qkv_width"]
        rest = value - hp["num_heads"] * head_dim
        if rest > 0 and rest % (2 * head_dim) == 0:
            hp.put("num_kv_heads", rest // (2 * head_dim), f"tensor shapes ({what})")


def complete(hp, observed, config_path):
    """Fill in what only the tensors can tell and cross-check everything both can tell.

    ``observed``: values read off the tensor shapes (hidden_size, num_layers, vocab_size, ffn_size,
    kv_width, q_width); missing keys are simply not checked.
    """
    def check(name, value, what):
        if name not in hp:
            hp.put(name, value, f"tensor shapes ({what})")
        elif int(hp[name]) != int(value):
            raise ConvertError(f"{hp.source[name]} says {name} = {hp[name]}, but the checkpoint's {what} "
                               f"gives {value}")

    for name in ("hidden_size", "num_layers", "vocab_size", "head_dim"):
        if name in observed:
            check(name, observed[name][0], observed[name][1])
    for name in ("hidden_size", "num_layers"):
        if name not in hp:
            raise ConvertError(f"{config_path}: cannot determine {name}")
    if "head_dim" not in hp:
        if hp["hidden_size"] % hp["num_heads"]:
            raise ConvertError(f"{config_path}: hidden_size {hp['hidden_size']} is not divisible by "
                               f"num_heads {hp['num_heads']}; set head_dim")
        hp.put("head_dim", hp["hidden_size"] // hp["num_heads"], "hidden_size / num_heads")
    _kv_heads_from_shapes(hp, observed)
    hp.put("q_width", hp["num_heads"] * hp["head_dim"], "num_heads x head_dim")
    hp.put("kv_width", hp["num_kv_heads"] * hp["head_dim"], "num_kv_heads x head_dim")
    hp.put("qkv_width", hp["q_width"] + 2 * hp["kv_width"], "(num_heads + 2 num_kv_heads) x head_dim")
    if "qkv_width" in observed and observed["qkv_width"][0] != hp["qkv_width"]:
        value, what = observed["qkv_width"]
        raise ConvertError(f"{hp.source['num_heads']} and {hp.source['num_kv_heads']} give (num_heads + 2 "
                           f"num_kv_heads) x head_dim = {hp['qkv_width']}, but the checkpoint's {what} gives {value}")
    if "rope_fraction" in hp:       # partial rotary embedding (GLM: the first half of each head)
        hp.put("rope_dim", int(hp["head_dim"] * float(hp["rope_fraction"])), "head_dim x rope fraction")
    else:
        hp.put("rope_dim", hp["head_dim"], "head_dim")
    if "kv_width" in observed:
        value, what = observed["kv_width"]
        if value != hp["kv_width"]:
            raise ConvertError(f"{hp.source['num_kv_heads']} gives num_kv_heads = {hp['num_kv_heads']} "
                               f"(KV width {hp['kv_width']}), but the checkpoint's {what} gives {value}")
    if "q_width" in observed and observed["q_width"][0] != hp["q_width"]:
        value, what = observed["q_width"]
        raise ConvertError(f"{hp.source['num_heads']} gives num_heads x head_dim = {hp['q_width']}, "
                           f"but the checkpoint's {what} gives {value}")

    if hp.get("intermediate_size") is not None:
        hp.put("ffn_size", int(hp["intermediate_size"]), hp.source["intermediate_size"])
    elif "multiple_of" in hp and "ffn_size" not in observed:
        hp.put("ffn_size", _llama_ffn(int(hp["hidden_size"]), int(hp["multiple_of"]), hp.get("ffn_dim_multiplier")),
               "derived from hidden_size, multiple_of, ffn_dim_multiplier")
    if "ffn_size" in observed:
        if "ffn_size" not in hp and "multiple_of" in hp:
            derived = _llama_ffn(int(hp["hidden_size"]), int(hp["multiple_of"]), hp.get("ffn_dim_multiplier"))
            hp.put("ffn_size", derived, "derived from hidden_size, multiple_of and ffn_dim_multiplier "
                   f"in {config_path}")
        check("ffn_size", observed["ffn_size"][0], observed["ffn_size"][1])
    if "ffn_size" in hp:
        hp.put("gate_up_width", 2 * int(hp["ffn_size"]), "2 x ffn_size")     # a fused [gate; up]
    handled = {"hidden_size", "num_layers", "vocab_size", "head_dim", "kv_width", "q_width", "qkv_width", "ffn_size"}
    for name, (value, what) in observed.items():
        if name not in handled:
            check(name, value, what)
    if "context_length" not in hp:
        raise ConvertError(f"{config_path}: no context length (seq_length / max_position_embedding)")
    return hp


def lookup(config, key):
    """config[key], where a dotted key reaches into nested sections ("moe_config.expert_num")."""
    value = config
    for part in key.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def ignored_settings(family_map, config, config_path):
    """Warnings for config settings MindFormers ignores for this family (the map's ``ignored_config``: key ->
    [values that mean 'not set', why]), so a user does not expect them to shape the GGUF."""
    notes = []
    for key, (unset, why) in family_map.ignored_config.items():
        value = lookup(config, key)
        if value is not None and value not in unset:
            notes.append(f"{config_path}: {key} is {value!r}, but {why}")
    return notes
