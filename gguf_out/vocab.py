"""Tokenizer -> GGUF vocabulary metadata. SentencePiece ``tokenizer.model`` parsed with protobuf alone.

What llama.cpp needs (gguf-targets.md §3.1, §3.3): tokens, scores and token types, padded to the
embedding rows with unique ``[PAD{id}]`` tokens, special token ids, add_bos/add_eos, and the chat template.
"""

import math
from dataclasses import dataclass, field
from pathlib import Path

from gguf import TokenType

from msckpt import safeio
from msckpt.schema import message_class

from .errors import ConvertError

PAD_SCORE = -10000.0
ADDED_SCORE = -1000.0


@dataclass
class Vocab:
    model: str                      # tokenizer.ggml.model: "llama" (SentencePiece) or "gpt2"
    tokens: list
    scores: list
    types: list
    special: dict = field(default_factory=dict)    # "bos"/"eos"/"eot"/"unk"/"pad" -> id
    add_bos: bool | None = None
    add_eos: bool | None = None
    add_space_prefix: bool | None = None
    chat_template: str | None = None
    pre: str | None = None
    merges: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    source: str = ""

    @property
    def kind(self):
        """The tokenizer kind of a map ("sentencepiece" or "bpe") this vocabulary came from."""
        return "sentencepiece" if self.model == "llama" else "bpe"


# tokenizer files per map kind, in order of preference ("bpe": byte-level BPE, see vocab_bpe.py)
TOKENIZER_FILES = {
    "sentencepiece": ("tokenizer.model",),
    "bpe": ("tokenizer.json", "vocab.json", "*.tiktoken", "tokenizer.model"),
}
TOKENIZER_FILES[None] = ("tokenizer.model", "tokenizer.json", "vocab.json", "*.tiktoken")
# files beside the tokenizer that may be read with it (no output may be one of them: publish.refuse_inputs)
SIDE_FILES = ("tokenizer_config.json", "tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt",
              "added_tokens.json", "special_tokens_map.json", "config.json")


def tokenizer_patterns(kinds):
    """The tokenizer file names to look for, in order, for one kind or a list of kinds (a map's tokenizer_kinds)."""
    kinds = [kinds] if kinds is None or isinstance(kinds, str) else kinds
    patterns = []
    for kind in kinds:
        patterns += [p for p in TOKENIZER_FILES.get(kind, TOKENIZER_FILES[None]) if p not in patterns]
    return patterns


def find_tokenizer(ckpt_path, kinds=None):
    """A tokenizer file of the given kind(s) beside the checkpoint (or inside it, for a checkpoint directory)."""
    path = Path(ckpt_path).resolve()
    return _tokenizer_in(path if path.is_dir() else path.parent, kinds)


def _tokenizer_in(folder, kinds):
    for pattern in tokenizer_patterns(kinds):
        found = sorted(p for p in folder.glob(pattern) if p.is_file())
        if found:
            return found[0]
    return None


def load_tokenizer(path, family_map):
    """The GGUF vocabulary for the tokenizer kind the family map names (``path`` may be a directory). A map with
    several tokenizer kinds (ChatGLM: SentencePiece for ChatGLM2/3, BPE for GLM-4) takes the kind of the file."""
    kinds = family_map.tokenizer_kinds
    path = Path(path)
    if path.is_dir() or path.name == "tokenizer_config.json":
        folder = path if path.is_dir() else path.parent
        path = _tokenizer_in(folder, kinds)
        if path is None:
            raise ConvertError(f"{folder}: no tokenizer file in it (looked for {', '.join(tokenizer_patterns(kinds))})")
    if len(kinds) > 1:
        from .detect import tokenizer_kind
        family_map = family_map.for_tokenizer(tokenizer_kind(path) if path.is_file() else None)
    kind = family_map.tokenizer
    if kind == "sentencepiece":
        from .vocab_bpe import is_tiktoken
        if path.suffix == ".json" or path.suffix == ".tiktoken" or is_tiktoken(path):
            raise ConvertError(f"{path}: a byte-level BPE tokenizer, but the map '{family_map.family}' expects a "
                               "SentencePiece tokenizer.model")
        return load_sentencepiece(path, family_map.tokenizer_pre, family_map.tokenizer_specials)
    if kind == "bpe":
        from .vocab_bpe import load_bpe
        return load_bpe(path, family_map.tokenizer_pre, family_map.tokenizer_specials,
                        f"the map '{family_map.family}'")
    raise ConvertError(f"{family_map.path}: unsupported tokenizer kind '{family_map.tokenizer}'")


def load_sentencepiece(path, pre=None, specials=None):
    """``pre``: tokenizer.ggml.pre (llama.cpp ignores it for SentencePiece; written as its converter does);
    ``specials``: the map's tokenizer_specials — tokens the tokenizer code appends after the model's pieces (ChatGLM3's
    [gMASK], sop, <|user|>, ...), role tokens and add_bos, filling only what the files leave unsaid."""
    path = Path(path)
    data = safeio.read_bytes(path, ConvertError, "tokenizer", safeio.LARGE)
    model_proto = message_class("sentencepiece_model", "ms2gguf.spm.ModelProto")
    try:
        model = model_proto.FromString(data)
    except Exception:   # protobuf's DecodeError has no stable import path across versions
        raise ConvertError(f"{path}: not a SentencePiece model (protobuf parse failed)") from None
    if not model.pieces:
        raise ConvertError(f"{path}: SentencePiece model has no pieces")
    tokens, scores, types = [], [], []
    for i, piece in enumerate(model.pieces):
        if not piece.piece:
            raise ConvertError(f"{path}: piece {i} is empty")
        if not math.isfinite(piece.score):
            raise ConvertError(f"{path}: piece {i} ({piece.piece!r}) has the score {piece.score}")
        tokens.append(piece.piece)
        scores.append(float(piece.score))
        # SentencePiece's piece types have the same numbers as GGUF's token types, except that llama.cpp's
        # converter writes user-defined pieces of the .model as NORMAL.
        kind = piece.type if 1 <= piece.type <= 6 else TokenType.NORMAL
        types.append(TokenType.NORMAL if kind == TokenType.USER_DEFINED else kind)
    specials = specials or {}
    from .vocab_bpe import _map_specials
    for _, text, special in _map_specials(specials, len(tokens), str(path)):
        if text in tokens:
            raise ConvertError(f"{path}: the map's special token {text!r} is already a piece of the model")
        tokens.append(text)
        scores.append(0.0)
        types.append(TokenType.CONTROL if special else TokenType.USER_DEFINED)
    spec = model.trainer_spec
    vocab = Vocab("llama", tokens, scores, types, source=str(path), pre=pre)
    for name, value in (("unk", spec.unk_id), ("bos", spec.bos_id), ("eos", spec.eos_id), ("pad", spec.pad_id)):
        if 0 <= value < len(tokens):
            vocab.special[name] = value
    norm = model.normalizer_spec
    vocab.add_space_prefix = norm.add_dummy_prefix
    if norm.name and norm.name != "identity":
        vocab.warnings.append(f"{path}: normalizer '{norm.name}' is ignored by llama.cpp; tokenization of some "
                              "texts (unusual whitespace, compatibility characters) may differ")
    _apply_tokenizer_config(vocab, path.parent / "tokenizer_config.json")
    for role in ("bos", "eos", "eot", "unk", "pad"):
        if role not in vocab.special and specials.get(role) in tokens:
            vocab.special[role] = tokens.index(specials[role])
    if vocab.add_bos is None and isinstance(specials.get("add_bos"), bool):
        vocab.add_bos = specials["add_bos"]
    return vocab


def _apply_tokenizer_config(vocab, path):
    """HF tokenizer_config.json beside the tokenizer: chat template, add_bos/eos, added special tokens."""
    if not safeio.present(path, ConvertError):
        return
    config = safeio.load_json(path, ConvertError, "tokenizer_config.json", safeio.LARGE)
    if not isinstance(config, dict):
        raise ConvertError(f"{path}: expected a JSON object")
    template = config.get("chat_template")
    if isinstance(template, list):      # [{"name": ..., "template": ...}]: take the default
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    if isinstance(template, str) and template:
        vocab.chat_template = template
    for key in ("add_bos_token", "add_eos_token"):
        if isinstance(config.get(key), bool):
            setattr(vocab, key.replace("_token", ""), config[key])
    index = {text: i for i, text in enumerate(vocab.tokens)}
    for key, info in added_tokens_decoder(path, config).items():
        token_id, text = key, info["content"]
        if token_id >= len(vocab.tokens):
            continue    # placed when padding (see pad_to)
        if vocab.tokens[token_id] != text and text in index:
            continue
        vocab.tokens[token_id] = text
        vocab.types[token_id] = TokenType.CONTROL if info.get("special") else TokenType.USER_DEFINED
    for name in ("bos", "eos", "unk", "pad"):
        token = config.get(f"{name}_token")
        if isinstance(token, dict):
            token = token.get("content")
        if isinstance(token, str) and token in index:
            vocab.special[name] = index[token]
    vocab.added_beyond = {k: v for k, v in added_tokens_decoder(path, config).items() if k >= len(vocab.tokens)}
    vocab.added_source = str(path)


MAX_ID = 1 << 24        # beyond any real vocabulary; ids drive list sizes, so a made-up one must not


def added_tokens_decoder(path, config):
    """tokenizer_config.json's added_tokens_decoder as {id: entry}, validated: ids non-negative integers below
    MAX_ID, entries objects with a string "content"."""
    entries = config.get("added_tokens_decoder") or {}
    if not isinstance(entries, dict):
        raise ConvertError(f"{path}: added_tokens_decoder must be an object of id -> token")
    out = {}
    for key, info in entries.items():
        try:
            token_id = int(key)
        except ValueError:
            raise ConvertError(f"{path}: added_tokens_decoder id {key!r} is not an integer") from None
        if not 0 <= token_id < MAX_ID:
            raise ConvertError(f"{path}: added_tokens_decoder id {token_id} is out of range (0 to {MAX_ID - 1})")
        if not isinstance(info, dict) or not isinstance(info.get("content"), str) or not info["content"]:
            raise ConvertError(f"{path}: added_tokens_decoder entry {key!r} needs a non-empty string \"content\"")
        out[token_id] = info
    return out


def pad_to(vocab, rows):
    """Make the token list exactly ``rows`` long: llama.cpp requires len(tokens) == token_embd rows."""
    n = len(vocab.tokens)
    if n > rows:
        raise ConvertError(f"{vocab.source}: the tokenizer has {n} tokens but the embedding has only {rows} rows")
    taken = set(vocab.tokens)
    if len(taken) != n:
        from collections import Counter      # (list.count per token would be quadratic in the vocabulary)
        dupes = sorted(t for t, k in Counter(vocab.tokens).items() if k > 1)[:3]
        raise ConvertError(f"{vocab.source}: duplicate tokens {dupes} (llama.cpp aborts on duplicates)")
    added = getattr(vocab, "added_beyond", {})
    beyond = [i for i in added if i >= rows]
    if beyond:
        raise ConvertError(f"{getattr(vocab, 'added_source', vocab.source)}: added token "
                           f"{added[beyond[0]].get('content')!r} has the id {beyond[0]}, beyond the {rows} rows of the "
                           "embedding")
    for i in range(n, rows):
        info = added.get(i)
        text = info.get("content") if isinstance(info, dict) else None
        if text and text not in taken:
            kind, score = (TokenType.CONTROL if info.get("special") else TokenType.USER_DEFINED), ADDED_SCORE
        else:
            text, kind, score = f"[PAD{i}]", TokenType.UNUSED, PAD_SCORE
            while text in taken:
                text = f"[PAD{i}_]" if text == f"[PAD{i}]" else text + "_"
        taken.add(text)
        vocab.tokens.append(text)
        vocab.scores.append(score)
        vocab.types.append(kind)
    return vocab
