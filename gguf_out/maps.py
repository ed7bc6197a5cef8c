"""Family maps (``maps/*.json``): MindFormers names -> GGUF names, transforms, skip rules, metadata.

Architecture knowledge is data. A map is loaded from a path or by the bare name of a bundled map, and
checked against gguf-py's tensor tables so a typo in a GGUF name fails at load time, not in llama.cpp.
"""

import copy
import fnmatch
import json
import re
from pathlib import Path

import gguf

from .errors import ConvertError

_HERE = Path(__file__).resolve().parent
SPLITS = {"qkv": 3, "gate_up": 2}
PERMUTES = {"q", "k", "qkv", None}      # "qkv": the Q and K parts of a fused [Q;K;V] kept fused
TOKENIZER_KINDS = ("sentencepiece", "bpe")


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
        # "regroup": a fused tensor kept fused but put in llama.cpp's [Q; K; V] / [gate; up] row order (ChatGLM's
        # query_key_value and dense_h_to_4h when rank-blocked by tensor parallelism, or interleaved)
        self.regroup = spec.get("regroup") is not None
        self.split = spec.get("regroup", spec.get("split"))
        targets = spec["to"]
        self.targets = targets if isinstance(targets, list) else [targets]
        permute = spec.get("permute")
        self.permutes = permute if isinstance(permute, list) else [permute] * len(self.targets)
        # which fused_layout entry decides the row layout: the split kind, or a named one ("mcore_qkv")
        self.layout = spec.get("layout", self.split)
        if self.split is not None and self.split not in SPLITS:
            raise ConvertError(f"{where}: unknown split or regroup '{self.split}' (known: {', '.join(SPLITS)})")
        wanted = SPLITS[self.split] if self.split and not self.regroup else 1
        if len(self.targets) != wanted:
            raise ConvertError(f"{where}: '{self.source}' needs {wanted} target name{'s' if wanted > 1 else ''}")
        if len(self.permutes) != len(self.targets) or any(p not in PERMUTES for p in self.permutes):
            raise ConvertError(f"{where}: bad 'permute' for '{self.source}' (use \"q\", \"k\", \"qkv\" or null per "
                               "target)")
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
            # true/false, or {"flag": config key}: permute only when the config sets that key (use_rearrange_rope)
            self.rope_permute = data.get("rope_permute", False)
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
            # another tokenizer kind the family ships, with its own pre-tokenizer, specials and chat template:
            # {"sentencepiece": {"tokenizer_pre": ..., "tokenizer_specials": ..., "chat_template": ...}}
            self.tokenizer_variants = data.get("tokenizer_variants", {})
            skip = data.get("skip", {})
        except (KeyError, TypeError) as err:
            raise ConvertError(f"{where}: malformed map (missing or wrong entry {err})") from None
        self._check_fused_layout(where)
        self._check_tokenizers(where)
        if not (isinstance(self.rope_permute, bool) or (isinstance(self.rope_permute, dict)
                                                        and isinstance(self.rope_permute.get("flag"), str))):
            raise ConvertError(f"{where}: 'rope_permute' must be true, false or {{\"flag\": config key}}")
        self.skip_groups = set(skip.get("groups", []))
        self.skip_names = list(skip.get("names", []))
        self._check_against_gguf(where)

    def _check_tokenizers(self, where):
        from .templates import FORMATS, lookup
        kinds = {self.tokenizer: self.__dict__, **self.tokenizer_variants}
        for kind, spec in kinds.items():
            if kind not in TOKENIZER_KINDS or not isinstance(spec, dict):
                raise ConvertError(f"{where}: unknown tokenizer kind '{kind}' (known: {', '.join(TOKENIZER_KINDS)})")
            template = spec.get("chat_template")
            if template is not None and lookup(template) is None:
                raise ConvertError(f"{where}: unknown chat_template '{template}' (built-in: {', '.join(FORMATS)})")
            if not isinstance(spec.get("tokenizer_pre"), (str, type(None))) or \
                    not isinstance(spec.get("tokenizer_specials", {}), dict):
                raise ConvertError(f"{where}: 'tokenizer_pre' must be a string and 'tokenizer_specials' an object")

    @property
    def tokenizer_kinds(self):
        return [self.tokenizer, *(k for k in self.tokenizer_variants if k != self.tokenizer)]

    def for_tokenizer(self, kind):
        """This map with the tokenizer settings of ``kind`` (one of tokenizer_kinds; None or the main kind: itself)."""
        if kind is None or kind == self.tokenizer or kind not in self.tokenizer_variants:
            return self
        variant = copy.copy(self)
        variant.tokenizer = kind
        spec = self.tokenizer_variants[kind]
        variant.tokenizer_pre = spec.get("tokenizer_pre")
        variant.tokenizer_specials = spec.get("tokenizer_specials", {})
        variant.chat_template = spec.get("chat_template")
        return variant

    def permutes_rope(self, config):
        """Whether the checkpoint's Q/K rows are in rotate_half order and must be permuted for llama.cpp."""
        if isinstance(self.rope_permute, dict):
            return config.get(self.rope_permute["flag"]) is True
        return self.rope_permute

    def _check_fused_layout(self, where):
        layouts = ("interleaved", "contiguous")
        for kind, spec in self.fused_layout.items():
            flags = spec.get("flags", {}) if isinstance(spec, dict) else None
            if (not isinstance(flags, dict) or spec.get("default", "interleaved") not in layouts
                    or any(not isinstance(v, list) or len(v) != 2 or set(v) - set(layouts) for v in flags.values())):
                raise ConvertError(f"{where}: bad fused_layout entry '{kind}' (want {{\"default\": layout, \"flags\": "
                                   "{config key: [layout if true, layout if false]}})")
        for rule in self.rules:
            if rule.layout != rule.split and (rule.split is None or rule.layout not in self.fused_layout):
                raise ConvertError(f"{where}: '{rule.source}' names the layout '{rule.layout}', which needs a split "
                                   "and a fused_layout entry of that name")

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
