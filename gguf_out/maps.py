"""Family maps (``maps/*.json``): MindFormers names -> GGUF names, transforms, skip rules, metadata.

Architecture knowledge is data. A map is loaded from a path or by the bare name of a bundled map, and
checked against gguf-py's tensor tables so a typo in a GGUF name fails at load time, not in llama.cpp.
"""

import fnmatch
import json
import re
from pathlib import Path

import gguf

from .errors import ConvertError

_HERE = Path(__file__).resolve().parent
SPLITS = {"qkv": 3, "gate_up": 2}
PERMUTES = {"q", "k", None}


def maps_dir():
    """Bundled maps: gguf_out/maps when installed, ./maps in a source checkout."""
    for candidate in (_HERE / "maps", _HERE.parent / "maps"):
        if (candidate / "llama2.json").is_file():
            return candidate
    raise FileNotFoundError("ms2gguf's bundled maps are missing from the installation")


def bundled_names():
    return sorted(p.stem for p in maps_dir().glob("*.json"))


class Rule:
    """One row of a map: a MindFormers name pattern and the GGUF tensor(s) it becomes."""

    def __init__(self, spec, where):
        self.source = spec["from"]
        self.split = spec.get("split")
        targets = spec["to"]
        self.targets = targets if isinstance(targets, list) else [targets]
        permute = spec.get("permute")
        self.permutes = permute if isinstance(permute, list) else [permute] * len(self.targets)
        if self.split is not None and self.split not in SPLITS:
            raise ConvertError(f"{where}: unknown split '{self.split}' (known: {', '.join(SPLITS)})")
        if len(self.targets) != (SPLITS[self.split] if self.split else 1):
            raise ConvertError(f"{where}: '{self.source}' needs {SPLITS.get(self.split, 1)} target names")
        if len(self.permutes) != len(self.targets) or any(p not in PERMUTES for p in self.permutes):
            raise ConvertError(f"{where}: bad 'permute' for '{self.source}' (use \"q\", \"k\" or null per target)")
        # "model.layers.{i}.x" -> regex with a named layer group
        self._regex = re.compile("^" + re.escape(self.source).replace(r"\{i\}", r"(?P<i>\d+)") + "$")

    def match(self, name):
        """The layer index (or -1 for a non-layer tensor) if name matches, else None."""
        m = self._regex.match(name)
        if not m:
            return None
        return int(m.group("i")) if "i" in m.groupdict() else -1

    def target_names(self, layer):
        return [t.replace("{i}", str(layer)) for t in self.targets]


class FamilyMap:
    def __init__(self, data, path):
        where = str(path)
        self.path = where
        try:
            self.family = data["family"]
            self.arch = data["arch"]
            self.description = data.get("description", "")
            self.tokenizer = data.get("tokenizer", "sentencepiece")
            self.tokenizer_pre = data.get("tokenizer_pre")             # llama.cpp pre-tokenizer name (BPE)
            self.tokenizer_specials = data.get("tokenizer_specials", {})   # see gguf_out/vocab_bpe.py
            self.rope_permute = bool(data.get("rope_permute", False))
            self.config_keys = data.get("config", {})
            self.defaults = data.get("defaults", {})
            self.metadata = data.get("metadata", {})
            self.rules = [Rule(spec, where) for spec in data["tensors"]]
            self.shapes = data.get("shapes", {})
            self.required = data.get("required", [])
            # {"qkv"|"gate_up": {"default": layout, "flags": {config key: [layout if true, layout if false]}}}
            self.fused_layout = data.get("fused_layout", {})
            self.generated = data.get("generated", {})     # {GGUF tensor: generator name in generated.py}
            self.detect = data.get("detect", {})           # hints for choosing this map (detect.py)
            self.chat_template = data.get("chat_template")  # default built-in chat format (templates.py)
            skip = data.get("skip", {})
        except (KeyError, TypeError) as err:
            raise ConvertError(f"{where}: malformed map (missing or wrong entry {err})") from None
        if not isinstance(self.tokenizer_pre, (str, type(None))) or not isinstance(self.tokenizer_specials, dict):
            raise ConvertError(f"{where}: 'tokenizer_pre' must be a string and 'tokenizer_specials' an object")
        self._check_fused_layout(where)
        from .templates import FORMATS, lookup
        if self.chat_template is not None and lookup(self.chat_template) is None:
            raise ConvertError(f"{where}: unknown chat_template '{self.chat_template}' "
                               f"(built-in: {', '.join(FORMATS)})")
        self.skip_groups = set(skip.get("groups", []))
        self.skip_names = list(skip.get("names", []))
        self._check_against_gguf(where)

    def _check_fused_layout(self, where):
        layouts = ("interleaved", "contiguous")
        for kind, spec in self.fused_layout.items():
            flags = spec.get("flags", {}) if isinstance(spec, dict) else None
            if (kind not in SPLITS or not isinstance(flags, dict) or spec.get("default", "interleaved") not in layouts
                    or any(not isinstance(v, list) or len(v) != 2 or set(v) - set(layouts) for v in flags.values())):
                raise ConvertError(f"{where}: bad fused_layout entry '{kind}' (want {{\"default\": layout, \"flags\": "
                                   f"{{config key: [layout if true, layout if false]}}}} for {' or '.join(SPLITS)})")

    def _check_against_gguf(self, where):
        archs = {name: arch for arch, name in gguf.MODEL_ARCH_NAMES.items()}
        if self.arch not in archs:
            raise ConvertError(f"{where}: unknown GGUF architecture '{self.arch}'")
        allowed = {gguf.TENSOR_NAMES[t].replace("{bid}", "{i}") for t in gguf.MODEL_TENSORS[archs[self.arch]]}
        for target in [t for rule in self.rules for t in rule.targets] + list(self.generated):
            base = target.rsplit(".", 1)[0]
            if base not in allowed:
                raise ConvertError(f"{where}: '{target}' is not a tensor of GGUF architecture '{self.arch}'")

    def rule_for(self, name):
        """(rule, layer) for a checkpoint name, or (None, None)."""
        for rule in self.rules:
            layer = rule.match(name)
            if layer is not None:
                return rule, layer
        return None, None

    def skipped_by_name(self, name):
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.skip_names)


def load_map(spec):
    """A FamilyMap from a JSON path or a bundled map's bare name ("llama2")."""
    path = Path(spec)
    if not path.suffix and not path.exists():
        path = maps_dir() / f"{spec}.json"
        if not path.is_file():
            raise ConvertError(f"no bundled map named '{spec}' (bundled: {', '.join(bundled_names())}; "
                               "or give a path to a .json map)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConvertError(f"{path}: map file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConvertError(f"{path}: cannot read map ({err})") from None
    except json.JSONDecodeError as err:
        raise ConvertError(f"{path}: map is not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") \
            from None
    if not isinstance(data, dict):
        raise ConvertError(f"{path}: a map must be a JSON object")
    return FamilyMap(data, path)
