"""Family maps (``maps/*.json``): MindFormers names -> GGUF names, transforms, skip rules, metadata.

Architecture knowledge is data. A map is loaded from a path or by the bare name of a bundled map, and
checked against gguf-py's tensor tables so a typo in a GGUF name fails at load time, not in llama.cpp.
"""

import copy
import fnmatch
import re
from pathlib import Path

import gguf

from msckpt import safeio

from .errors import ConvertError
from .steps import fan_out

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
    """One row of a map: MindFormers name pattern(s) and the GGUF tensor(s) they become.

    ``from`` is a pattern with ``{i}`` for the layer (and ``{e}`` for the expert of per-expert tensors, which are
    stacked into one 3-D tensor), or a list of patterns whose tensors are concatenated along the first axis.
    ``steps`` (gguf_out/steps.py) say how the source becomes the targets; the older ``split`` / ``permute`` keys
    are shorthands for the steps ``{"split": ...}`` and ``{"permute": ...}``, ``regroup`` for ``{"regroup": ...}`` (a
    fused tensor kept fused, in llama.cpp's row order). ``ndim`` restricts the rule to tensors of that rank (the
    training and inference networks save some tensors in different shapes); ``shape`` names the source's dimensions
    so hyperparameters can be read off it; ``layout`` names the map's fused_layout entry that decides the rows of
    this rule's fused tensor, when it is not the one of its kind (e.g. mcore "linear_qkv" beside legacy "w_qkv")."""

    def __init__(self, spec, where):
        sources = spec["from"]
        self.sources = list(sources) if isinstance(sources, list) else [sources]
        if not self.sources or not all(isinstance(p, str) for p in self.sources):
            raise ConvertError(f"{where}: 'from' must be a name pattern or a list of them")
        self.source = self.sources[0]
        targets = spec["to"]
        self.targets = targets if isinstance(targets, list) else [targets]
        self.ndim = spec.get("ndim")
        self.shape = spec.get("shape")
        # the rule applies only when this hyperparameter is set and non-zero ("if") / unset or zero ("unless"):
        # e.g. MLA's fused linear_qkv starts with the q-LoRA down projection only when there is a q-LoRA
        self.condition = (spec["if"], True) if "if" in spec else (spec["unless"], False) if "unless" in spec else None
        self.stacked = "{e}" in self.source
        if self.stacked and len(self.sources) > 1:
            raise ConvertError(f"{where}: '{self.source}': per-expert ({{e}}) rules have one pattern")
        split, permute, regroup = spec.get("split"), spec.get("permute"), spec.get("regroup")
        steps = spec.get("steps")
        if steps is None:
            for kind in (split, regroup):
                if kind is not None and kind not in SPLITS:
                    raise ConvertError(f"{where}: unknown split or regroup '{kind}' (known: {', '.join(SPLITS)})")
            if isinstance(permute, list) and any(p not in PERMUTES for p in permute) or \
                    not isinstance(permute, list) and permute not in PERMUTES:
                raise ConvertError(f"{where}: bad 'permute' for '{self.source}' (use \"q\", \"k\", \"qkv\" or null "
                                   "per target)")
            steps = ([{"split": split}] if split else []) + ([{"regroup": regroup}] if regroup else []) + \
                ([{"permute": permute}] if permute else [])
            if steps and len(self.sources) > 1 and not self.stacked:     # the shorthands act on the concatenation
                steps = [{"concat": 0}] + steps
        elif split is not None or permute is not None or regroup is not None:
            raise ConvertError(f"{where}: '{self.source}': give 'steps' or 'split' / 'regroup' / 'permute', not both")
        if not isinstance(steps, list):
            raise ConvertError(f"{where}: '{self.source}': 'steps' must be a list")
        if not steps and len(self.sources) > 1:
            steps = [{"concat": 0}]
        count = fan_out(steps, f"{where}: '{self.source}'", 1 if self.stacked else len(self.sources))
        if len(self.targets) != count:
            raise ConvertError(f"{where}: '{self.source}' needs {count} target names")
        self.steps = steps
        named = [s.get("split", s.get("regroup")) for s in steps if isinstance(s, dict)]
        self.fused = next((k for k in named if isinstance(k, str) and k in SPLITS), None)
        self.layout = spec.get("layout")
        self._regexes = [re.compile("^" + re.escape(p).replace(r"\{i\}", r"(?P<i>\d+)")
                                    .replace(r"\{e\}", r"(?P<e>\d+)") + "$") for p in self.sources]

    def match(self, name, ndim=None):
        """(layer or -1, expert or -1, index of the matching pattern) if ``name`` (of rank ``ndim``, when given)
        is this rule's, else None."""
        if ndim is not None and self.ndim is not None and ndim != self.ndim:
            return None
        for k, regex in enumerate(self._regexes):
            m = regex.match(name)
            if m:
                groups = m.groupdict()
                return int(groups.get("i") or -1), int(groups.get("e") or -1), k
        return None

    def target_names(self, layer):
        return [t.replace("{i}", str(layer)) for t in self.targets]

    def holds(self, hp):
        """Whether the rule's condition holds for these hyperparameters (always, without one)."""
        if self.condition is None:
            return True
        name, wanted = self.condition
        return bool(hp.get(name)) == wanted


# the kind of value each section of a map holds (checked before use: a map file is input like any other)
_SECTIONS = {"family": str, "arch": str, "description": str, "tokenizer": str, "config": dict, "defaults": dict,
             "metadata": dict, "tensors": list, "shapes": dict, "required": list, "fused_layout": dict,
             "generated": dict, "detect": dict, "layer_kinds": dict, "reject": dict, "ignored_config": dict,
             "rope_scaling": dict, "derived": dict, "required_why": dict, "tokenizer_variants": dict, "skip": dict,
             "tokenizer_specials": dict, "constraints": list}
METADATA_KINDS = ("u32", "f32", "bool", "str", "i32")


def _check_sections(data, where):
    for key, kind in _SECTIONS.items():
        if key in data and not isinstance(data[key], kind):
            raise ConvertError(f"{where}: '{key}' must be a JSON {'object' if kind is dict else kind.__name__}")
    for name, keys in data.get("config", {}).items():
        if not isinstance(keys, list) or not all(isinstance(k, str) or (isinstance(k, dict) and isinstance(
                k.get("key"), str) and isinstance(k.get("times", 1), (int, float))) for k in keys):
            raise ConvertError(f"{where}: config entry '{name}' must be a list of config keys")
    for key, spec in data.get("metadata", {}).items():
        if not (isinstance(spec, list) and 2 <= len(spec) <= 3 and spec[0] in METADATA_KINDS):
            raise ConvertError(f"{where}: metadata entry '{key}' must be [type, hyperparameter] with a type of "
                               f"{', '.join(METADATA_KINDS)}")
    if not all(isinstance(rule, dict) for rule in data.get("tensors", [])):
        raise ConvertError(f"{where}: 'tensors' must be a list of rule objects")


class FamilyMap:
    def __init__(self, data, path):
        where = str(path)
        self.path = where
        _check_sections(data, where)
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
            # {GGUF key: (type, hyperparameter)}; a third entry "optional" writes the key only when the value is known
            metadata = data.get("metadata", {})
            self.metadata = {key: tuple(spec[:2]) for key, spec in metadata.items()}
            self.optional_metadata = {key for key, spec in metadata.items() if spec[2:] == ["optional"]}
            self.rules = [Rule(spec, where) for spec in data["tensors"]]
            self.shapes = data.get("shapes", {})
            self.required = data.get("required", [])
            # {"qkv"|"gate_up": {"default": layout, "flags": {config key: [layout if true, layout if false]}}}
            self.fused_layout = data.get("fused_layout", {})
            self.generated = data.get("generated", {})     # {GGUF tensor: generator name in generated.py}
            self.detect = data.get("detect", {})           # hints for choosing this map (detect.py)
            self.chat_template = data.get("chat_template")  # default built-in chat format (templates.py)
            # {kind: [GGUF tensors every layer of that kind has]}: e.g. dense and mixture-of-experts layers;
            # each layer must have all the tensors of exactly one kind
            self.layer_kinds = data.get("layer_kinds", {})
            self.layer_order = data.get("layer_order")     # None: any; "dense_first": dense layers, then MoE
            self.reject = data.get("reject", {})           # {name pattern: why such a checkpoint is not this family}
            self.routing = data.get("routing")             # expert routing llama.cpp computes for this arch (moe.py)
            # {config key: [values that mean "not set", why a set value is ignored]}
            self.ignored_config = data.get("ignored_config", {})
            # a checkpoint saved from MindFormers' inference network: {"tensor": regex, "ndim": n} (its fused
            # tensors are then contiguous, whatever the yaml says)
            self.inference_save = data.get("inference_save")
            # {"types": [scalings carried as metadata], "defaults": {YaRN parameter: value}, "missing": why a
            # config without rope scaling is refused}
            self.rope_scaling = data.get("rope_scaling", {})
            # {hyperparameter: dimension expression} computed once the config and tensors are read
            self.derived = data.get("derived", {})
            # layers beyond num_layers are this (e.g. multi-token prediction) and are skipped, or None: an error
            self.extra_layers = data.get("extra_layers")
            # {hyperparameter: regex}: true when a checkpoint name matches (a save kind told by its names, for
            # rules' "if" / "unless" and rope_scaling's "missing_if")
            self.tensor_flags = {k: re.compile(v) for k, v in data.get("tensor_flags", {}).items()}
            self.required_why = data.get("required_why", {})   # {required tensor pattern: why it may be missing}
            # [[dimension, dimension, why]]: hyperparameters the architecture needs equal (llama.cpp's shapes)
            self.constraints = data.get("constraints", [])
            # another tokenizer kind the family ships, with its own pre-tokenizer, specials and chat template:
            # {"sentencepiece": {"tokenizer_pre": ..., "tokenizer_specials": ..., "chat_template": ...}}
            self.tokenizer_variants = data.get("tokenizer_variants", {})
            skip = data.get("skip", {})
        except (KeyError, TypeError, re.error) as err:
            raise ConvertError(f"{where}: malformed map (missing or wrong entry {err})") from None
        self._check_fused_layout(where)
        self._check_tokenizers(where)
        if not isinstance(self.constraints, list) or any(
                not isinstance(c, list) or len(c) != 3 or not all(isinstance(x, (str, int)) for x in c)
                for c in self.constraints):
            raise ConvertError(f"{where}: 'constraints' must be a list of [dimension, dimension, why]")
        if not (isinstance(self.rope_permute, bool) or (isinstance(self.rope_permute, dict)
                                                        and isinstance(self.rope_permute.get("flag"), str))):
            raise ConvertError(f"{where}: 'rope_permute' must be true, false or {{\"flag\": config key}}")
        self.skip_groups = set(skip.get("groups", []))
        self.skip_names = list(skip.get("names", []))
        self.skip_reasons = dict(skip.get("reasons", {}))      # {name pattern: why such entries are skipped}
        self._check_against_gguf(where)

    def _check_fused_layout(self, where):
        layouts = ("interleaved", "contiguous")
        named = {rule.layout for rule in self.rules if rule.layout}
        for kind, spec in self.fused_layout.items():
            flags = spec.get("flags", {}) if isinstance(spec, dict) else None
            if (kind not in set(SPLITS) | named or not isinstance(flags, dict)
                    or spec.get("default", "interleaved") not in layouts
                    or any(not isinstance(v, list) or len(v) != 2 or set(v) - set(layouts) for v in flags.values())):
                raise ConvertError(f"{where}: bad fused_layout entry '{kind}' (want {{\"default\": layout, \"flags\": "
                                   f"{{config key: [layout if true, layout if false]}}}} for {' or '.join(SPLITS)} "
                                   "or a layout a rule names)")
        for rule in self.rules:
            if rule.layout and (rule.fused is None or rule.layout not in self.fused_layout):
                raise ConvertError(f"{where}: '{rule.source}' names the layout '{rule.layout}', which needs a split "
                                   "or regroup and a fused_layout entry of that name")

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

    def _check_against_gguf(self, where):
        archs = {name: arch for arch, name in gguf.MODEL_ARCH_NAMES.items()}
        if self.arch not in archs:
            raise ConvertError(f"{where}: unknown GGUF architecture '{self.arch}'")
        allowed = {gguf.TENSOR_NAMES[t].replace("{bid}", "{i}") for t in gguf.MODEL_TENSORS[archs[self.arch]]}
        for target in [t for rule in self.rules for t in rule.targets] + list(self.generated):
            base = target.rsplit(".", 1)[0]
            if base not in allowed:
                raise ConvertError(f"{where}: '{target}' is not a tensor of GGUF architecture '{self.arch}'")

    def rule_for(self, name, ndim=None):
        """(rule, layer) for a checkpoint name (of rank ``ndim``, when given), or (None, None)."""
        for rule in self.rules:
            found = rule.match(name, ndim)
            if found is not None:
                return rule, found[0]
        return None, None

    def rejection(self, name):
        """Why a checkpoint holding ``name`` is not this family's (the map's ``reject`` patterns), or None."""
        return next((why for pattern, why in self.reject.items() if fnmatch.fnmatchcase(name, pattern)), None)

    def skipped_by_name(self, name):
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.skip_names + list(self.skip_reasons))

    def skip_reason(self, name):
        """The reason the map gives for skipping entries like ``name`` (its skip.reasons patterns), or None."""
        return next((why for pattern, why in self.skip_reasons.items() if fnmatch.fnmatchcase(name, pattern)), None)


def load_map(spec):
    """A FamilyMap from a JSON path or a bundled map's bare name ("llama2")."""
    path = Path(spec)
    if not path.suffix and not path.exists():
        path = maps_dir() / f"{spec}.json"
        if not path.is_file():
            raise ConvertError(f"no bundled map named '{spec}' (bundled: {', '.join(bundled_names())}; "
                               "or give a path to a .json map)")
    data = safeio.load_json(path, ConvertError, "map")
    if not isinstance(data, dict):
        raise ConvertError(f"{path}: a map must be a JSON object")
    try:
        return FamilyMap(data, path)
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, re.error) as err:
        # a hand-written map with a value of the wrong kind somewhere: name the file, not the Python error's line
        raise ConvertError(f"{path}: not a valid map ({type(err).__name__}: {err})") from None
