"""Run GGUF files in real llama.cpp from tests, through ctypes.

The ``xllamacpp`` wheel (pinned in the ``test`` extra: ``xllamacpp==2026.10.11549``) ships llama.cpp as one shared
library that exports the llama and ggml C APIs. This module wraps the few functions the tests need:

* :class:`LlamaModel` loads a GGUF file and returns the raw logits of every prompt position, tokenizes, and reads
  metadata;
* :func:`quantize_chunk`, :func:`row_size` and :func:`validate_row_data` expose ggml's reference quantizers.

See ``gguf-targets.md`` §11 for the API and ABI notes this follows.

The two parameter structs (``llama_model_params``, ``llama_context_params``) change layout between llama.cpp
versions, so they are handled as opaque, over-sized byte blobs: the library fills them in
(``llama_*_default_params``) and we pass them back unchanged, except for a few context fields that :class:`LlamaModel`
locates by their default contents and checks before touching (see :func:`context_params`). Large structs are
returned through a hidden pointer and passed in memory (x86-64 SysV) or by reference (AArch64), and the struct is the
last argument of the functions that take it, so the extra bytes at the end are never read by the library.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import struct
from pathlib import Path

import numpy as np

__all__ = [
    "library",
    "LlamaModel",
    "quantize_chunk",
    "row_size",
    "validate_row_data",
    "apply_builtin_chat_template",
    "GGML_TYPE_F32",
    "GGML_TYPE_F16",
]

GGML_TYPE_F32 = 0
GGML_TYPE_F16 = 1

_PARAMS_BLOB_SIZE = 1024  # bigger than any llama_*_params struct so far (the context params are ~176 bytes)
_PARAMS_SEARCH_LIMIT = 256  # bytes beyond the real struct are uninitialised; only search the start of the blob


class _ParamsBlob(ctypes.Structure):
    """Opaque stand-in for ``struct llama_model_params`` / ``struct llama_context_params``."""

    _fields_ = [("raw", ctypes.c_uint8 * _PARAMS_BLOB_SIZE)]


llama_token = ctypes.c_int32
llama_pos = ctypes.c_int32
llama_seq_id = ctypes.c_int32


class LlamaBatch(ctypes.Structure):
    """``struct llama_batch`` (stable layout for a long time)."""

    _fields_ = [
        ("n_tokens", ctypes.c_int32),
        ("token", ctypes.POINTER(llama_token)),
        ("embd", ctypes.POINTER(ctypes.c_float)),
        ("pos", ctypes.POINTER(llama_pos)),
        ("n_seq_id", ctypes.POINTER(ctypes.c_int32)),
        ("seq_id", ctypes.POINTER(ctypes.POINTER(llama_seq_id))),
        ("logits", ctypes.POINTER(ctypes.c_int8)),
    ]


class LlamaChatMessage(ctypes.Structure):
    """``struct llama_chat_message``."""

    _fields_ = [("role", ctypes.c_char_p), ("content", ctypes.c_char_p)]


# void (*ggml_log_callback)(enum ggml_log_level level, const char * text, void * user_data)
_LOG_CALLBACK_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)


@_LOG_CALLBACK_TYPE
def _silent_log(level, text, user_data):  # pragma: no cover - called from C
    pass


def _library_path() -> Path:
    spec = importlib.util.find_spec("xllamacpp")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the xllamacpp package is not installed (pip install 'ms2gguf[test]')")
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    candidates = sorted(package_dir.glob("xllamacpp*.so"))
    if not candidates:
        raise RuntimeError(f"no xllamacpp shared library found in {package_dir}")
    return candidates[0]


def _declare(lib: ctypes.CDLL, name: str, restype, *argtypes) -> None:
    fn = getattr(lib, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)


@functools.lru_cache(maxsize=None)
def library() -> ctypes.CDLL:
    """The xllamacpp shared library with the used functions declared, logging silenced and the backend initialised."""
    lib = ctypes.CDLL(str(_library_path()))
    p = ctypes.c_void_p
    c_int32, c_int64, c_size_t, c_bool, c_char_p = (
        ctypes.c_int32, ctypes.c_int64, ctypes.c_size_t, ctypes.c_bool, ctypes.c_char_p)

    # logging and backend
    _declare(lib, "llama_log_set", None, _LOG_CALLBACK_TYPE, p)
    _declare(lib, "llama_backend_init", None)
    # parameters, model and context
    _declare(lib, "llama_model_default_params", _ParamsBlob)
    _declare(lib, "llama_context_default_params", _ParamsBlob)
    _declare(lib, "llama_model_load_from_file", p, c_char_p, _ParamsBlob)
    _declare(lib, "llama_init_from_model", p, p, _ParamsBlob)
    _declare(lib, "llama_free", None, p)
    _declare(lib, "llama_model_free", None, p)
    _declare(lib, "llama_n_ctx", ctypes.c_uint32, p)
    _declare(lib, "llama_n_batch", ctypes.c_uint32, p)
    # LoRA adapters (freed with their model)
    _declare(lib, "llama_adapter_lora_init", p, p, c_char_p)
    _declare(lib, "llama_set_adapters_lora", c_int32, p, ctypes.POINTER(p), c_size_t, ctypes.POINTER(ctypes.c_float))
    # vocabulary
    _declare(lib, "llama_model_get_vocab", p, p)
    _declare(lib, "llama_vocab_n_tokens", c_int32, p)
    _declare(lib, "llama_tokenize", c_int32,
             p, c_char_p, c_int32, ctypes.POINTER(llama_token), c_int32, c_bool, c_bool)
    _declare(lib, "llama_token_to_piece", c_int32, p, llama_token, ctypes.c_char_p, c_int32, c_int32, c_bool)
    # metadata
    _declare(lib, "llama_model_meta_val_str", c_int32, p, c_char_p, ctypes.c_char_p, c_size_t)
    _declare(lib, "llama_model_chat_template", c_char_p, p, c_char_p)
    _declare(lib, "llama_chat_apply_template", c_int32,
             c_char_p, ctypes.POINTER(LlamaChatMessage), c_size_t, c_bool, ctypes.c_char_p, c_int32)
    # evaluation
    _declare(lib, "llama_get_memory", p, p)
    _declare(lib, "llama_memory_clear", None, p, c_bool)
    _declare(lib, "llama_decode", c_int32, p, LlamaBatch)
    _declare(lib, "llama_get_logits_ith", ctypes.POINTER(ctypes.c_float), p, c_int32)
    # ggml quantizers
    _declare(lib, "ggml_quantize_chunk", c_size_t, c_int32, p, p, c_int64, c_int64, c_int64, p)
    _declare(lib, "ggml_quantize_requires_imatrix", c_bool, c_int32)
    _declare(lib, "ggml_row_size", c_size_t, c_int32, c_int64)
    _declare(lib, "ggml_blck_size", c_int64, c_int32)
    _declare(lib, "ggml_validate_row_data", c_bool, c_int32, p, c_size_t)

    lib.llama_log_set(_silent_log, None)  # _silent_log is module-level, so the callback stays alive
    lib.llama_backend_init()
    return lib


# ---------------------------------------------------------------------------------------------------------------
# llama_context_params fields, located by content


def _find_unique(blob: bytes, signature: bytes, what: str) -> int:
    """Byte offset of the single occurrence of ``signature`` at a 4-aligned offset near the start of ``blob``."""
    hits = [off for off in range(0, _PARAMS_SEARCH_LIMIT - len(signature) + 1, 4)
            if blob[off:off + len(signature)] == signature]
    if len(hits) != 1:
        raise RuntimeError(
            f"cannot locate {what} in llama_context_default_params() (found {len(hits)} candidates); the xllamacpp "
            "build's llama_context_params layout or defaults differ from what tests/llamacpp.py expects "
            "(xllamacpp==2026.10.11549)")
    return hits[0]


def _context_field_offsets(blob: bytes) -> dict[str, int]:
    """Offsets of ``n_ctx``, ``flash_attn_type``, ``type_k`` and ``type_v`` in the default context params.

    Signatures (gguf-targets.md §11.2), which also assert the expected defaults:

    * ``flash_attn_type`` is the last of four consecutive int enums equal to -1 (``rope_scaling_type``,
      ``pooling_type``, ``attention_type``, ``flash_attn_type`` = auto) followed by two ``0.0f`` floats
      (``rope_freq_base``, ``rope_freq_scale``);
    * ``type_k``, ``type_v`` are the int pair ``1, 1`` (GGML_TYPE_F16) between two pairs of NULL pointers
      (``cb_eval``, ``cb_eval_user_data`` before; ``abort_callback``, ``abort_callback_data`` after);
    * ``n_ctx`` is the first field; with ``n_batch``, ``n_ubatch``, ``n_seq_max`` the defaults are 512, 2048, 512, 1.

    For xllamacpp 2026.10.11549 on x86-64 this finds 0, 52, 104 and 108.
    """
    flash_sig = struct.pack("<4i2f", -1, -1, -1, -1, 0.0, 0.0)
    kv_sig = bytes(16) + struct.pack("<2i", GGML_TYPE_F16, GGML_TYPE_F16) + bytes(16)
    head_sig = struct.pack("<4I", 512, 2048, 512, 1)

    flash = _find_unique(blob, flash_sig, "flash_attn_type") + 12
    type_k = _find_unique(blob, kv_sig, "type_k/type_v") + 16
    if blob[:16] != head_sig:
        raise RuntimeError(
            "unexpected defaults for n_ctx/n_batch/n_ubatch/n_seq_max in llama_context_default_params(): "
            f"{struct.unpack_from('<4I', blob)}; expected (512, 2048, 512, 1)")
    if not flash < type_k:
        raise RuntimeError("flash_attn_type found after type_k in llama_context_params: unexpected layout")
    return {"n_ctx": 0, "flash_attn_type": flash, "type_k": type_k, "type_v": type_k + 4}


def context_params(n_ctx: int, exact: bool) -> _ParamsBlob:
    """Default ``llama_context_params`` with ``n_ctx`` set; with ``exact`` also an F32 KV cache and no flash attention.

    The defaults (F16 KV cache, flash attention "auto") cost about 1e-3 relative logit accuracy; the exact settings
    agree with a float64 reference to about 1e-6 relative.
    """
    params = library().llama_context_default_params()
    raw = bytearray(params.raw)
    offsets = _context_field_offsets(bytes(raw))
    struct.pack_into("<I", raw, offsets["n_ctx"], n_ctx)
    if exact:
        struct.pack_into("<i", raw, offsets["flash_attn_type"], 0)  # LLAMA_FLASH_ATTN_TYPE_DISABLED
        struct.pack_into("<i", raw, offsets["type_k"], GGML_TYPE_F32)
        struct.pack_into("<i", raw, offsets["type_v"], GGML_TYPE_F32)
    ctypes.memmove(params.raw, bytes(raw), len(raw))
    return params


# ---------------------------------------------------------------------------------------------------------------
# model


class LlamaModel:
    """A GGUF model loaded in llama.cpp with one context.

    >>> with LlamaModel("model.gguf") as m:
    ...     ids = m.tokenize("Hello")
    ...     logits = m.logits(ids)      # float32 [len(ids), n_vocab], raw logits of every position
    """

    def __init__(self, path, n_ctx: int = 256, exact: bool = True, lora=None, lora_scale: float = 1.0):
        """``lora``: a LoRA adapter GGUF applied with ``lora_scale`` (llama.cpp's --lora / --lora-scaled)."""
        self._lib = lib = library()
        self._model = None
        self._ctx = None
        self.path = str(path)
        self._model = lib.llama_model_load_from_file(self.path.encode(), lib.llama_model_default_params())
        if not self._model:
            raise RuntimeError(f"llama.cpp failed to load the model {self.path!r}")
        self._ctx = lib.llama_init_from_model(self._model, context_params(n_ctx, exact))
        if not self._ctx:
            self.close()
            raise RuntimeError(f"llama.cpp failed to create a context for {self.path!r}")
        if lora is not None:
            adapter = lib.llama_adapter_lora_init(self._model, str(lora).encode())
            if not adapter:
                self.close()
                raise RuntimeError(f"llama.cpp failed to load the LoRA adapter {str(lora)!r} for {self.path!r}")
            adapters = (ctypes.c_void_p * 1)(adapter)
            scales = (ctypes.c_float * 1)(lora_scale)
            if lib.llama_set_adapters_lora(self._ctx, adapters, 1, scales) != 0:
                self.close()
                raise RuntimeError(f"llama.cpp refused the LoRA adapter {str(lora)!r}")
        self._vocab = lib.llama_model_get_vocab(self._model)
        self.n_vocab: int = lib.llama_vocab_n_tokens(self._vocab)
        self.n_ctx: int = lib.llama_n_ctx(self._ctx)  # llama.cpp may round the requested size up (to 256)
        # one llama_decode call takes at most n_batch tokens (llama.cpp caps it at the requested n_ctx) and
        # aborts the process beyond that, so logits() checks against this
        self.max_tokens: int = min(self.n_ctx, lib.llama_n_batch(self._ctx))

    # lifetime

    def close(self) -> None:
        if self._ctx:
            self._lib.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            self._lib.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> "LlamaModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    def _check_open(self) -> None:
        if not self._ctx:
            raise RuntimeError("LlamaModel is closed")

    # vocabulary

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Token ids of ``text``. ``add_special`` adds BOS/EOS as the GGUF says; ``parse_special`` turns the text of
        control tokens (e.g. ``<s>``) into their ids."""
        self._check_open()
        data = text.encode("utf-8")
        capacity = len(data) + 8
        while True:
            buf = (llama_token * capacity)()
            n = self._lib.llama_tokenize(self._vocab, data, len(data), buf, capacity, add_special, parse_special)
            if n >= 0:
                return list(buf[:n])
            capacity = -n  # buffer too small: -n is the required size

    def token_to_piece(self, token_id: int, special: bool = True) -> bytes:
        """The bytes a token stands for (``▁`` shown as a space; a byte token gives its single raw byte).
        With ``special=False`` control tokens render as empty."""
        self._check_open()
        size = 64
        while True:
            buf = ctypes.create_string_buffer(size)
            n = self._lib.llama_token_to_piece(self._vocab, token_id, buf, size, 0, special)
            if n >= 0:
                return buf.raw[:n]
            size = -n

    # metadata

    def meta(self, key: str) -> str | None:
        """A GGUF metadata value rendered as text by llama.cpp, or None if the key is absent."""
        self._check_open()
        size = 256
        while True:
            buf = ctypes.create_string_buffer(size)
            n = self._lib.llama_model_meta_val_str(self._model, key.encode(), buf, size)
            if n < 0:
                return None
            if n < size:
                return buf.value.decode("utf-8", errors="replace")
            size = n + 1

    def chat_template(self, name: str | None = None) -> str | None:
        """``tokenizer.chat_template`` (or the named template ``tokenizer.chat_template.<name>``), None if absent."""
        self._check_open()
        value = self._lib.llama_model_chat_template(self._model, name.encode() if name is not None else None)
        return None if value is None else value.decode("utf-8")

    # evaluation

    def logits(self, token_ids) -> np.ndarray:
        """Raw logits (float32 ``[len(token_ids), n_vocab]``) of every position, evaluated as one fresh sequence
        (KV cache cleared first, positions 0..n-1, one batch)."""
        self._check_open()
        ids = [int(t) for t in token_ids]
        n = len(ids)
        if n == 0:
            raise ValueError("logits() needs at least one token")
        if n > self.max_tokens:
            raise ValueError(f"{n} tokens exceed the {self.max_tokens} tokens one batch of this context can take")
        bad = [t for t in ids if not 0 <= t < self.n_vocab]
        if bad:
            raise ValueError(f"token ids out of range [0, {self.n_vocab}): {bad[:5]}")

        lib = self._lib
        lib.llama_memory_clear(lib.llama_get_memory(self._ctx), True)

        tokens = (llama_token * n)(*ids)
        pos = (llama_pos * n)(*range(n))
        n_seq_id = (ctypes.c_int32 * n)(*([1] * n))
        seq_zero = (llama_seq_id * 1)(0)  # every token belongs to sequence 0
        seq_id = (ctypes.POINTER(llama_seq_id) * n)(*([ctypes.cast(seq_zero, ctypes.POINTER(llama_seq_id))] * n))
        want_logits = (ctypes.c_int8 * n)(*([1] * n))
        batch = LlamaBatch(n, tokens, None, pos, n_seq_id, seq_id, want_logits)

        rc = lib.llama_decode(self._ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with code {rc}")

        out = np.empty((n, self.n_vocab), dtype=np.float32)
        for i in range(n):
            row = lib.llama_get_logits_ith(self._ctx, i)
            if not row:
                raise RuntimeError(f"llama.cpp returned no logits for position {i}")
            out[i] = np.ctypeslib.as_array(row, shape=(self.n_vocab,))
        return out


# ---------------------------------------------------------------------------------------------------------------
# ggml quantizers


def row_size(ggml_type: int, n: int) -> int:
    """Bytes of one row of ``n`` elements of ``ggml_type`` (``ggml_row_size``)."""
    return int(library().ggml_row_size(int(ggml_type), int(n)))


def quantize_chunk(ggml_type: int, data: np.ndarray, quant_weights=None) -> bytes:
    """Quantize float32 rows ``[nrows, n_per_row]`` with ggml's quantizer (``ggml_quantize_chunk``): the reference
    path without ``quant_weights``, else the importance-weighted one (float32 ``[n_per_row]``, ggml's ``imatrix``).
    Returns ``nrows * row_size(ggml_type, n_per_row)`` bytes."""
    lib = library()
    ggml_type = int(ggml_type)
    data = np.ascontiguousarray(data, dtype=np.float32)
    if data.ndim != 2:
        raise ValueError(f"expected a 2-D [nrows, n_per_row] array, got shape {data.shape}")
    nrows, n_per_row = data.shape
    # ggml aborts the whole process on these, so check first
    if quant_weights is not None:
        quant_weights = np.ascontiguousarray(quant_weights, dtype=np.float32).reshape(-1)
        if quant_weights.size != n_per_row:
            raise ValueError(f"quant_weights has {quant_weights.size} values, expected {n_per_row}")
    elif lib.ggml_quantize_requires_imatrix(ggml_type):
        raise ValueError(f"ggml type {ggml_type} cannot be quantized without an importance matrix")
    block = lib.ggml_blck_size(ggml_type)
    if block <= 0 or n_per_row % block:
        raise ValueError(f"row length {n_per_row} is not a multiple of the block size {block} of ggml type {ggml_type}")
    out = ctypes.create_string_buffer(nrows * row_size(ggml_type, n_per_row))
    imatrix = None if quant_weights is None else quant_weights.ctypes.data
    written = lib.ggml_quantize_chunk(ggml_type, data.ctypes.data, out, 0, nrows, n_per_row, imatrix)
    if written != len(out):
        raise RuntimeError(f"ggml_quantize_chunk wrote {written} bytes, expected {len(out)}")
    return out.raw


def apply_builtin_chat_template(name: str, messages, add_assistant: bool = True) -> str:
    """A conversation rendered by one of llama.cpp's built-in C++ chat formats (``llama_chat_apply_template`` with a
    format name such as ``"chatglm4"``; no model needed)."""
    lib = library()
    chat = (LlamaChatMessage * len(messages))(
        *[LlamaChatMessage(m["role"].encode(), m["content"].encode()) for m in messages])
    size = 256
    while True:
        buf = ctypes.create_string_buffer(size)
        n = lib.llama_chat_apply_template(name.encode(), chat, len(messages), add_assistant, buf, size)
        if n < 0:
            raise ValueError(f"llama.cpp has no built-in chat template '{name}'")
        if n <= size:
            return buf.raw[:n].decode("utf-8")
        size = n + 1


def validate_row_data(ggml_type: int, data) -> bool:
    """ggml's sanity check of (quantized) row bytes, as run by llama-quantize (``ggml_validate_row_data``)."""
    buf = bytes(data)
    return bool(library().ggml_validate_row_data(int(ggml_type), buf, len(buf)))
