"""``ms2gguf CKPT auto OUT``: choose the bundled map from the checkpoint's tensor names and the config.

Each map's ``"detect"`` section says how to recognise it (mindformers-layouts.md §2, §9 step 3):

* ``require`` / ``forbid``: regexes at least one / none of the weight names may match (q/k/v biases mean Qwen2,
  ``q_layernorm`` means Qwen3);
* ``config``: identity keys (HF ``architectures`` / ``model_type``, MindFormers ``model_config.type``); a config that
  sets such a key to a value the map does not list rules the map out;
* ``signals``: config values that point to the map (``extend_method: LLAMA3``, ``vocab_size: 128256``, ...); dotted
  keys reach into dicts (``rope_scaling.rope_type``).

A map is a candidate when it has a rule or a skip rule for every weight in the checkpoint and passes the checks
above. With several candidates left, the tokenizer kind found beside the checkpoint (SentencePiece or BPE) and the
signals decide; a tie is an error that lists the candidates.
"""

import re
from pathlib import Path

from msckpt.classify import group_of

from .errors import ConvertError
from .hparams import lookup
from .lora import lora_suffix
from .maps import bundled_names, load_map


def choose_map(ckpt, config, config_path, tokenizer_path=None):
    """The one bundled FamilyMap that fits, or a ConvertError naming the candidates."""
    weights = [t.name for t in ckpt if group_of(t) == "weights" and not lora_suffix(t.name)]   # by the base weights
    if not weights:
        raise ConvertError(f"{ckpt.path}: no model weights to recognise a family by")
    path = Path(tokenizer_path or ckpt.path).resolve()
    kind = tokenizer_kind(path if tokenizer_path and not path.is_dir() else _tokenizer_in(path))
    fits, rejected = [], []
    for name in bundled_names():
        fmap = load_map(name)
        reason = _rejects(fmap, weights, config)
        if reason:
            rejected.append(f"{name}: {reason}")
        else:
            fits.append((_score(fmap, config, kind), fmap))
    if not fits:
        raise ConvertError(f"{ckpt.path}: cannot tell which family this checkpoint is; no bundled map fits ("
                           + "; ".join(rejected) + "). Name the map: ms2gguf CKPT MAP OUT")
    fits.sort(key=lambda f: -f[0])
    if len(fits) > 1 and fits[0][0] == fits[1][0]:
        tied = [f[1].family for f in fits if f[0] == fits[0][0]]
        raise ConvertError(f"{ckpt.path}: cannot tell which family this checkpoint is: the maps {', '.join(tied)} "
                           f"all fit its tensor names and {config_path or 'the config'} does not decide between "
                           f"them; name one: ms2gguf CKPT {tied[0]} OUT")
    return fits[0][1]


def _rejects(fmap, weights, config):
    """Why the map cannot be this checkpoint's, or None."""
    uncovered = [n for n in weights if fmap.rule_for(n)[0] is None and not fmap.skipped_by_name(n)]
    if uncovered:
        return f"no rule for '{uncovered[0]}'"
    detect = fmap.detect
    for pattern in detect.get("require", []):
        if not any(re.search(pattern, n) for n in weights):
            return f"needs a tensor matching {pattern}"
    for pattern in detect.get("forbid", []):
        found = next((n for n in weights if re.search(pattern, n)), None)
        if found:
            return f"has '{found}'"
    for key, accepted in detect.get("config", {}).items():
        value = lookup(config, key)
        values = value if isinstance(value, list) else [value]
        if value is not None and not any(v in accepted for v in values):
            return f"the config's {key} is {value!r}"
    return None


def _score(fmap, config, kind):
    score = sum(1 for key, accepted in fmap.detect.get("signals", {}).items() if lookup(config, key) in accepted)
    score += sum(2 for key, accepted in fmap.detect.get("config", {}).items()
                 if any(v in accepted for v in _as_list(lookup(config, key))))
    if kind is not None:
        score += 3 if kind in fmap.tokenizer_kinds else -3
    return score


def _as_list(value):
    return value if isinstance(value, list) else [] if value is None else [value]


def _tokenizer_in(path):
    """The tokenizer file in a directory, or beside a checkpoint file."""
    folder = path if path.is_dir() else path.parent
    for name in ("tokenizer.json", "vocab.json", "tokenizer.model"):
        if (folder / name).is_file():
            return folder / name
    found = sorted(folder.glob("*.tiktoken"))
    return found[0] if found else None


def tokenizer_kind(path):
    """"sentencepiece", "bpe", or None when unknown: by file name, and for tokenizer.model by content (Llama 3's
    Meta tokenizer.model is a tiktoken text file, a SentencePiece model is protobuf)."""
    if path is None:
        return None
    path = Path(path)
    if path.suffix in (".json", ".tiktoken") or path.name == "merges.txt":
        return "bpe"
    if path.is_file():
        from .vocab_bpe import is_tiktoken
        return "bpe" if is_tiktoken(path) else "sentencepiece"
    return None
