"""Byte-level BPE tokenizers -> GGUF vocabulary (``tokenizer.ggml.model = "gpt2"``), without the tokenizers,
transformers or tiktoken packages.

Three on-disk forms (gguf-targets.md §3.2, mindformers-layouts.md §8):

* HF ``tokenizer.json`` (``model.type`` BPE; merges as ``"a b"`` strings or ``[a, b]`` lists; ``added_tokens``);
* ``vocab.json`` + ``merges.txt``, with added tokens from ``tokenizer_config.json`` / ``added_tokens.json``;
* tiktoken rank files (Llama 3's Meta ``tokenizer.model``, ``qwen.tiktoken``): one ``base64(token bytes) rank`` per
  line. The merges are derived from the ranks (:func:`merges_from_ranks`) and the special tokens, which these files
  do not hold, come from a ``tokenizer_config.json`` beside the file or else from the family map.

The family map supplies what the files cannot: ``tokenizer_pre`` (llama.cpp's pre-tokenizer name, e.g. ``llama-bpe``,
``qwen2``) and ``tokenizer_specials``::

    {"tokens": ["<|begin_of_text|>", {"content": "<tool_call>", "special": false},
                ["<|reserved_special_token_{}|>", 5, 251], ...],
     "bos": "<|begin_of_text|>", "eos": "<|end_of_text|>", "eot": "<|eot_id|>", "pad": "...", "add_bos": true}

``tokens`` (a text, an object with ``content``/``special``, or ``[pattern, start, stop]`` for ``pattern.format(n)``
with n in range(start, stop)) is used only when the files list no added tokens; the tokens get the ids right after
the base vocabulary, as Meta's and Qwen's tiktoken tokenizers assign them. The role names and ``add_bos`` fill only
what the files leave unsaid (files win: tokenizer_config.json, then config.json, then tokenizer.json's post-processor).

Token types follow llama.cpp's converter: NORMAL for the base vocabulary, CONTROL for special added tokens (and for
added tokens that look special, like ``<|...|>``), USER_DEFINED for other added tokens, UNUSED for ``[PAD{id}]``
holes.
"""

import base64
import binascii
import heapq
import re
from pathlib import Path

from gguf import TokenType

from msckpt import safeio

from .errors import ConvertError
from .vocab import MAX_ID, PAD_SCORE, Vocab, added_tokens_decoder

HOLES = 1 << 16         # ids a vocabulary may leave unused


def _byte_chars():
    """GPT-2's reversible byte -> printable character table used by byte-level BPE vocabularies."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, shifted = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:                       # control bytes, space, DEL, NBSP, soft hyphen -> U+0100 and up
            table[b] = chr(256 + shifted)
            shifted += 1
    return [table[b] for b in range(256)]


BYTE_CHARS = _byte_chars()
ROLES = ("bos", "eos", "eot", "pad", "unk")
_TIKTOKEN_LINE = re.compile(rb"^[A-Za-z0-9+/]+=*[ \t]+\d+\s*$")


def byte_text(token):
    """Token bytes in GPT-2 byte-unicode form, the text a byte-level vocabulary stores."""
    return "".join(BYTE_CHARS[b] for b in token)


def looks_special(text):
    """Added tokens llama.cpp's converter makes CONTROL even when not flagged special."""
    return (text in ("<pad>", "<mask>") or (text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<｜") and text.endswith("｜>")) or (text.startswith("<unused") and text.endswith(">")))


def is_tiktoken(path):
    """A tiktoken rank file starts with a text line "base64 rank"; a SentencePiece model is binary protobuf."""
    try:
        with safeio.open_regular(path, ConvertError) as f:
            head = f.read(4096)
    except (OSError, ConvertError):
        return False
    return bool(_TIKTOKEN_LINE.match(head.split(b"\n", 1)[0]))


# ---------------------------------------------------------------------------------------------------------------
# entry point


def load_bpe(path, pre=None, specials=None, where="the map"):
    """A gguf_out.vocab.Vocab from a byte-level BPE tokenizer file.

    ``pre``: tokenizer.ggml.pre; ``specials``: the map's tokenizer_specials (see the module docstring); ``where``
    names the map in messages."""
    path = Path(path)
    specials = specials or {}
    name = path.name
    if name == "merges.txt":
        path, name = path.with_name("vocab.json"), "vocab.json"
    if name == "vocab.json":
        reader = _read_vocab_merges
    elif path.suffix == ".json":
        reader = _read_tokenizer_json
    elif path.suffix == ".tiktoken" or is_tiktoken(path):
        reader = _read_tiktoken
    elif path.is_file():
        raise ConvertError(f"{path}: not a byte-level BPE tokenizer (a SentencePiece model?); {where} expects "
                           "tokenizer.json, vocab.json + merges.txt or a tiktoken file")
    else:
        raise ConvertError(f"{path}: tokenizer file not found")
    config = _read_json(path.parent / "tokenizer_config.json", optional=True) or {}
    if not isinstance(config, dict):
        raise ConvertError(f"{path.parent / 'tokenizer_config.json'}: expected a JSON object")
    base, merges, added, hints = reader(path, config)
    if not added:
        added = _map_specials(specials, max(base.values()) + 1, where)
    vocab = _assemble(path, base, merges, added)
    _apply_roles(vocab, path, config, hints, specials)
    vocab.pre = pre
    if not pre:
        vocab.warnings.append(f"{where} names no tokenizer_pre; llama.cpp falls back to its default pre-tokenizer "
                              "and may split text differently from the original tokenizer")
    return vocab


# ---------------------------------------------------------------------------------------------------------------
# readers: each returns (base {text: id}, merges ["a b"], added [(id, text, special)], hints {...})


def _read_tokenizer_json(path, config):
    data = _read_json(path)
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("vocab"), dict):
        raise ConvertError(f"{path}: not a tokenizers file (no model.vocab object)")
    if model.get("type", "BPE") != "BPE":
        raise ConvertError(f"{path}: model.type is {model.get('type')!r}; only byte-level BPE is supported here")
    if model.get("byte_fallback") or not _mentions_byte_level(data):
        raise ConvertError(f"{path}: a BPE tokenizer without byte-level pre-tokenization (SentencePiece-style); "
                           "llama.cpp's gpt2 tokenizer model would split it differently")
    base = _check_vocab(path, model["vocab"])
    merges = _merges_from_list(path, model.get("merges"))
    added = []
    entries = data.get("added_tokens") or []
    if not isinstance(entries, list):
        raise ConvertError(f"{path}: added_tokens must be a list")
    for i, entry in enumerate(entries):
        token_id = entry.get("id") if isinstance(entry, dict) else None
        content = entry.get("content") if isinstance(entry, dict) else None
        if not _is_id(token_id) or not isinstance(content, str) or not content:
            raise ConvertError(f"{path}: added_tokens[{i}] needs an integer 'id' (0 to {MAX_ID - 1}) and a "
                               "non-empty string 'content'")
        added.append((token_id, content, bool(entry.get("special"))))
    return base, merges, added + _added_from_config(path, config, added), _template_hints(data.get("post_processor"))


def _read_vocab_merges(path, config):
    merges_path = path.with_name("merges.txt")
    base = _check_vocab(path, _read_json(path))
    if not merges_path.exists():
        raise ConvertError(f"{path}: merges.txt is missing beside it")
    lines = safeio.read_text(merges_path, ConvertError, "merges file", safeio.LARGE).splitlines()
    merges = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or (number == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise ConvertError(f"{merges_path}: line {number}: expected two space-separated tokens, got {line[:60]!r}")
        merges.append(line)
    added = _added_from_config(path, config, [])
    extra = _read_json(path.with_name("added_tokens.json"), optional=True) or {}
    if not isinstance(extra, dict):
        raise ConvertError(f"{path.with_name('added_tokens.json')}: expected a JSON object of text -> id")
    known = {text for _, text, _ in added}
    for text, token_id in extra.items():
        if text not in known:
            if not _is_id(token_id):
                raise ConvertError(f"{path.with_name('added_tokens.json')}: the id of {text!r} is {token_id!r}, not "
                                   f"an integer from 0 to {MAX_ID - 1}")
            added.append((token_id, text, False))
    return base, merges, added, {}


def _read_tiktoken(path, config):
    data = safeio.read_bytes(path, ConvertError, "tokenizer", safeio.LARGE)
    ranks, ids = {}, set()
    for number, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError
            token, rank = base64.b64decode(parts[0], validate=True), int(parts[1])
        except (ValueError, binascii.Error):
            raise ConvertError(f"{path}: line {number}: expected 'base64-token rank', got "
                               f"{line[:60].decode('latin-1')!r}") from None
        if not token or token in ranks or rank in ids or not _is_id(rank):
            what = "an empty token" if not token else "a repeated token" if token in ranks else "a bad or repeated rank"
            raise ConvertError(f"{path}: line {number}: {what}")
        ranks[token] = rank
        ids.add(rank)
    if not ranks:
        raise ConvertError(f"{path}: no tokens in the tiktoken file")
    base = {byte_text(token): rank for token, rank in ranks.items()}
    merges = [f"{byte_text(a)} {byte_text(b)}" for a, b in merges_from_ranks(ranks)]
    return base, merges, _added_from_config(path, config, []), {}


def merges_from_ranks(ranks):
    """BPE merges (pairs of token bytes, in rank order) equivalent to tiktoken's rank-based merging.

    tiktoken merges, at each step, the adjacent pair whose concatenation has the lowest rank. For each token of two or
    more bytes, running that procedure over the token's own bytes with only the ranks below the token's rank ends in
    exactly the two pieces tiktoken joins to form it (its merge); a token that does not end in two pieces is never
    formed by merging (only by whole-word lookup) and gets no merge.
    """
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) < 2:
            continue
        parts = _split_by_ranks(ranks, token, rank)
        if len(parts) == 2:
            merges.append((parts[0], parts[1]))
    return merges


def _split_by_ranks(ranks, token, max_rank):
    """tiktoken's merging of ``token``'s bytes (the adjacent pair of lowest rank below ``max_rank`` first, the leftmost
    of equal ones), with a heap: O(n log n), where rescanning every pair after each merge would be quadratic in the
    token's length (a hostile file's one long token would take hours)."""
    n = len(token)
    following = list(range(1, n + 1))       # part starting at s ends where the next part starts: following[s]
    before = list(range(-1, n - 1))
    heap = []

    def push(start):
        middle = following[start] if start >= 0 else n
        if middle >= n:
            return
        end = following[middle]
        rank = ranks.get(token[start:end])
        if rank is not None and rank < max_rank:
            heapq.heappush(heap, (rank, start, middle, end))

    for start in range(n - 1):
        push(start)
    while heap:
        _, start, middle, end = heapq.heappop(heap)
        if following[start] != middle or following[middle] != end or before[middle] != start:
            continue                        # stale: one of the two parts has merged since
        following[start] = end
        before[middle] = -2                 # no longer the start of a part
        if end < n:
            before[end] = start
        push(before[start])
        push(start)
    parts, start = [], 0
    while start < n:
        parts.append(token[start:following[start]])
        start = following[start]
    return parts


# ---------------------------------------------------------------------------------------------------------------
# pieces shared by the readers


def _read_json(path, optional=False):
    if optional and not safeio.present(path, ConvertError):
        return None
    return safeio.load_json(path, ConvertError, "JSON file", safeio.LARGE)


def _check_vocab(path, vocab):
    if not isinstance(vocab, dict) or not vocab:
        raise ConvertError(f"{path}: the vocabulary must be a non-empty JSON object of token -> id")
    seen = {}
    for text, token_id in vocab.items():
        if not _is_id(token_id):
            raise ConvertError(f"{path}: token {text!r} has a bad id {token_id!r} (ids are integers from 0 to "
                               f"{MAX_ID - 1})")
        if token_id in seen:
            raise ConvertError(f"{path}: tokens {seen[token_id]!r} and {text!r} share the id {token_id}")
        seen[token_id] = text
    return vocab


def _is_id(value):
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_ID


def _merges_from_list(path, merges):
    if not isinstance(merges, list):
        raise ConvertError(f"{path}: model.merges is missing or not a list")
    out = []
    for i, merge in enumerate(merges):
        if isinstance(merge, str):
            parts = merge.split(" ")
        elif isinstance(merge, list) and all(isinstance(p, str) for p in merge):
            # [a, b] lists (tokenizers >= 0.20) may hold spaces; GGUF's "a b" form needs them as byte-level 'Ġ'
            parts = [p.replace(" ", BYTE_CHARS[32]) for p in merge]
        else:
            parts = []
        if len(parts) != 2 or not all(parts):
            raise ConvertError(f"{path}: model.merges[{i}] is not a pair of tokens: {str(merge)[:60]}")
        out.append(f"{parts[0]} {parts[1]}")
    return out


def _mentions_byte_level(data):
    """Whether a ByteLevel step appears in the pre-tokenizer or the decoder (byte-level BPE)."""
    def walk(node):
        if isinstance(node, dict):
            return node.get("type") == "ByteLevel" or any(walk(v) for v in node.values())
        if isinstance(node, list):
            return any(walk(v) for v in node)
        return False
    return walk(data.get("pre_tokenizer")) or walk(data.get("decoder"))


def _added_from_config(path, config, already):
    """added_tokens_decoder of tokenizer_config.json, for ids the tokenizer file does not list itself."""
    taken = {token_id for token_id, _, _ in already}
    added = []
    for token_id, info in added_tokens_decoder(path.parent / "tokenizer_config.json", config).items():
        text = info["content"]
        if token_id not in taken:
            added.append((token_id, str(text), bool(info.get("special"))))
    return added


def _template_hints(post):
    """bos/eos added by a TemplateProcessing post-processor (how Llama 3's tokenizer.json adds <|begin_of_text|>).

    GLM-4's adds two tokens, [gMASK]<sop>: that is no BOS llama.cpp could add; it is reported as a "prefix" (llama.cpp
    gets it from the chat template)."""
    steps = post.get("processors", [post]) if isinstance(post, dict) else []
    for step in steps:
        if isinstance(step, dict) and step.get("type") == "TemplateProcessing":
            single = [item for item in step.get("single") or [] if isinstance(item, dict)]
            lead = []
            for item in single:
                if "SpecialToken" not in item:
                    break
                lead.append(item["SpecialToken"].get("id"))
            if len(lead) > 1:
                return {"prefix": lead}
            first = lead[0] if lead else None
            last = single[-1].get("SpecialToken", {}).get("id") if single and len(single) > len(lead) else None
            return {"bos": first, "add_bos": first is not None, "eos": last, "add_eos": last is not None}
    return {}


def _map_specials(specials, first_id, where):
    """The map's special-token list, numbered from the end of the base vocabulary."""
    added = []
    for entry in specials.get("tokens", []):
        if isinstance(entry, str):
            items = [(entry, True)]
        elif isinstance(entry, dict) and isinstance(entry.get("content"), str):
            items = [(entry["content"], bool(entry.get("special", True)))]
        elif (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str)
              and all(isinstance(n, int) for n in entry[1:])):
            items = [(entry[0].format(n), True) for n in range(entry[1], entry[2])]
        else:
            raise ConvertError(f"{where}: bad tokenizer_specials token entry {entry!r}")
        for text, special in items:
            added.append((first_id + len(added), text, special))
    return added


def _assemble(path, base, merges, added):
    size = max([*base.values(), *(token_id for token_id, _, _ in added)]) + 1
    listed = len(base) + len(added)
    if size > 2 * listed + HOLES:
        # ids size the lists below; a real vocabulary has few holes (unused ids are padded with [PADn])
        raise ConvertError(f"{path}: the largest token id is {size - 1}, but only {listed} tokens are listed")
    tokens, types = [None] * size, [TokenType.NORMAL] * size
    for text, token_id in base.items():
        tokens[token_id] = text
    index = dict(base)
    for token_id, text, special in added:
        if token_id < 0:
            raise ConvertError(f"{path}: added token {text!r} has a negative id")
        if tokens[token_id] not in (None, text):
            raise ConvertError(f"{path}: id {token_id} is both {tokens[token_id]!r} and the added token {text!r}")
        if index.get(text, token_id) != token_id:
            raise ConvertError(f"{path}: token {text!r} has two ids, {index[text]} and {token_id} "
                               "(llama.cpp aborts on duplicate tokens)")
        tokens[token_id], index[text] = text, token_id
        types[token_id] = TokenType.CONTROL if special or looks_special(text) else TokenType.USER_DEFINED
    scores = [0.0] * size                       # llama.cpp's BPE ranks merges, not scores
    for i in range(size):
        if tokens[i] is None:
            tokens[i], types[i], scores[i] = f"[PAD{i}]", TokenType.UNUSED, PAD_SCORE
    missing = [b for b in range(256) if BYTE_CHARS[b] not in base]
    vocab = Vocab("gpt2", tokens, scores, types, merges=merges, source=str(path))
    if missing:
        vocab.warnings.append(f"{path}: {len(missing)} of the 256 byte tokens are missing (e.g. byte "
                              f"0x{missing[0]:02X}); llama.cpp fails on text that needs them")
    return vocab


def _apply_roles(vocab, path, config, hints, specials):
    """Special ids, add_bos/add_eos and the chat template: the files first, then the map's defaults."""
    index = {text: i for i, text in enumerate(vocab.tokens)}
    folder = path.parent
    for role in ROLES:
        token = config.get(f"{role}_token")
        if isinstance(token, dict):
            token = token.get("content")
        if isinstance(token, str) and token in index:
            vocab.special[role] = index[token]
        elif isinstance(token, str):
            vocab.warnings.append(f"{folder / 'tokenizer_config.json'}: {role}_token {token!r} is not in the "
                                  "vocabulary; ignored")
    model_config = _read_json(folder / "config.json", optional=True)
    if isinstance(model_config, dict):
        for role in ROLES:
            value = model_config.get(f"{role}_token_id")
            if role not in vocab.special and isinstance(value, int) and 0 <= value < len(vocab.tokens):
                vocab.special[role] = value
    for role in ROLES:
        if role in vocab.special:
            continue
        name = hints.get(role) or specials.get(role)
        if name in index:
            vocab.special[role] = index[name]
        elif name is not None:
            vocab.warnings.append(f"{path}: the {role} token {name!r} is not in the vocabulary; no {role} id written")
    prefix = hints.get("prefix")
    if prefix and list(prefix) != list(specials.get("prefix", [])):
        vocab.warnings.append(f"{path}: the tokenizer puts {''.join(prefix)} before every text, which llama.cpp "
                              "cannot do (it adds at most one BOS token); put it in the chat template or the prompt")
    # add_bos is always written: llama.cpp's default depends on the pre-tokenizer (gguf-targets.md §3.2)
    vocab.add_bos = bool(_first_bool(config.get("add_bos_token"), hints.get("add_bos"), specials.get("add_bos")))
    vocab.add_eos = _first_bool(config.get("add_eos_token"), hints.get("add_eos"), specials.get("add_eos"))
    template = config.get("chat_template")
    if template is None and safeio.present(folder / "chat_template.jinja", ConvertError):
        template = safeio.read_text(folder / "chat_template.jinja", ConvertError, "chat template")
    elif template is None and safeio.present(folder / "chat_template.json", ConvertError):
        data = _read_json(folder / "chat_template.json")
        template = data.get("chat_template") if isinstance(data, dict) else None
    if isinstance(template, list):      # [{"name": ..., "template": ...}]: take the default
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    if isinstance(template, str) and template:
        vocab.chat_template = template


def _first_bool(*values):
    return next((v for v in values if isinstance(v, bool)), None)
