"""Per-tensor ggml types for each --outtype preset: llama-quantize's mixing policy for the K-quant presets.

For q2_k ... q6_k this reproduces ``llama_tensor_get_type`` of llama.cpp's ``src/llama-quant.cpp`` (2026 code; no
user overrides, not ``--pure``; with or without an importance matrix), so a file converted with ``--outtype q4_k_m`` gets the same
types per tensor as ``llama-quantize model-f16.gguf Q4_K_M`` would give (gguf-targets.md §9; section numbers below
refer to it).  The legacy presets (f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1) use one type for every quantizable
weight, as convert_hf_to_gguf.py's ``--outtype`` does — except with an importance matrix, when every quantized
preset follows llama-quantize (the only tool that uses one).

    p = preset("q4_k_m")
    types = assign_types([(name, numpy_shape), ...], p, n_head=32, n_head_kv=8, n_layer=32)
    # -> [(GGMLQuantizationType, note or None), ...] in the same order; p.file_type -> general.file_type
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gguf import GGML_QUANT_SIZES, GGML_QUANT_VERSION, GGMLQuantizationType as T, LlamaFileType as FT

__all__ = ["Preset", "PRESETS", "preset", "assign_types", "quantizable", "is_70b"]


@dataclass(frozen=True)
class Preset:
    name: str                 # lower-case --outtype name, e.g. "q4_k_m"
    file_type: FT             # general.file_type (§6)
    base: T                   # default type of quantizable weights (§9.3)
    mixing: bool              # llama-quantize's per-tensor rules apply (K-quant presets)

    @property
    def quantized(self) -> bool:
        return self.base not in (T.F32, T.F16, T.BF16)

    @property
    def quantization_version(self) -> int | None:
        """general.quantization_version to write (llama-quantize writes 2), None for float files."""
        return GGML_QUANT_VERSION if self.quantized else None


PRESETS = {p.name: p for p in (
    Preset("f32", FT.ALL_F32, T.F32, False),
    Preset("f16", FT.MOSTLY_F16, T.F16, False),
    Preset("bf16", FT.MOSTLY_BF16, T.BF16, False),
    Preset("q8_0", FT.MOSTLY_Q8_0, T.Q8_0, False),
    Preset("q4_0", FT.MOSTLY_Q4_0, T.Q4_0, False),
    Preset("q4_1", FT.MOSTLY_Q4_1, T.Q4_1, False),
    Preset("q5_0", FT.MOSTLY_Q5_0, T.Q5_0, False),
    Preset("q5_1", FT.MOSTLY_Q5_1, T.Q5_1, False),
    Preset("q2_k", FT.MOSTLY_Q2_K, T.Q2_K, True),
    Preset("q3_k_s", FT.MOSTLY_Q3_K_S, T.Q3_K, True),
    Preset("q3_k_m", FT.MOSTLY_Q3_K_M, T.Q3_K, True),
    Preset("q3_k_l", FT.MOSTLY_Q3_K_L, T.Q3_K, True),
    Preset("q4_k_s", FT.MOSTLY_Q4_K_S, T.Q4_K, True),
    Preset("q4_k_m", FT.MOSTLY_Q4_K_M, T.Q4_K, True),
    Preset("q5_k_s", FT.MOSTLY_Q5_K_S, T.Q5_K, True),
    Preset("q5_k_m", FT.MOSTLY_Q5_K_M, T.Q5_K, True),
    Preset("q6_k", FT.MOSTLY_Q6_K, T.Q6_K, True),
)}
# llama-quantize's aliases: Q3_K, Q4_K, Q5_K mean the _M mixes
ALIASES = {"q3_k": "q3_k_m", "q4_k": "q4_k_m", "q5_k": "q5_k_m"}


def preset(name: str) -> Preset:
    key = name.lower()
    key = ALIASES.get(key, key)
    if key not in PRESETS:
        raise ValueError(f"unknown output type '{name}'; expected one of {', '.join(PRESETS)}")
    return PRESETS[key]


# ---------------------------------------------------------------------------------------------------------------
# which tensors are quantized at all (§9.1; llama-quant.cpp tensor_allows_quantization)

_NEVER_EXACT = ("position_embd.weight", "token_types.weight")      # LLM_TN(POS_EMBD / TOKEN_TYPES, "weight")
_NEVER_PARTS = (
    "_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel", "per_layer_model_proj",
    "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight", "indexer.q_proj.weight",
    "time_mix_first.weight", "time_mix_w0.weight", "time_mix_w1.weight", "time_mix_w2.weight",
    "time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight", "time_mix_a0.weight", "time_mix_a1.weight",
    "time_mix_a2.weight", "time_mix_g1.weight", "time_mix_g2.weight", "time_mix_decay_w1.weight",
    "time_mix_decay_w2.weight", "time_mix_lerp_fused.weight", "attn_rel_b.weight",
    ".position_embd", "sam.pos_embd", "sam.neck.", "sam.net_", ".rel_pos", ".patch_embd", ".patch_merger",
    "a.rvq.codebook", "mm.a.code_embd",
)


def quantizable(name: str, shape) -> bool:
    """llama-quantize quantizes only weights ("...weight") with at least 2 dimensions, minus a list of small or
    sensitive tensors (norms, MoE router, position embeddings, ...).  The others keep their type: F32 here, which is
    also what convert_hf_to_gguf.py forces for them."""
    if len(shape) < 2 or not name.endswith("weight"):
        return False
    if name in _NEVER_EXACT:
        return False
    return not any(part in name for part in _NEVER_PARTS)


# ---------------------------------------------------------------------------------------------------------------
# categories, visiting order and counters (§9.2)

_OUTPUT, _TOKEN_EMBD, _ATTN_QKV, _ATTN_KV_B, _ATTN_V, _ATTN_K, _ATTN_Q, _ATTN_OUTPUT, _FFN_UP, _FFN_GATE, \
    _FFN_DOWN, _OTHER = range(12)


def _category(name: str) -> int:
    """tensor_get_category: exact names for output/token_embd, substrings for the rest, first match wins."""
    if name == "output.weight":
        return _OUTPUT
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return _TOKEN_EMBD
    for part, cat in (("attn_qkv.weight", _ATTN_QKV), ("attn_kv_b.weight", _ATTN_KV_B),
                      ("attn_v.weight", _ATTN_V), ("attn_k.weight", _ATTN_K), ("attn_q.weight", _ATTN_Q),
                      ("attn_output.weight", _ATTN_OUTPUT), ("ffn_up", _FFN_UP), ("ffn_gate", _FFN_GATE),
                      ("ffn_down", _FFN_DOWN)):
        if part in name:
            return cat
    return _OTHER


_ATTN_V_LIKE = (_ATTN_V, _ATTN_QKV, _ATTN_KV_B)    # 2026: attn_qkv and attn_kv_b follow the attn_v rule
_BLK = re.compile(r"blk\.(\d+)\.")


def _layer_of(name: str) -> int:
    m = _BLK.match(name)
    return int(m.group(1)) if m else -1


def _visit_order(names):
    """Indices in the model loader's weights_map order: tensors outside blk.N first, then by layer number, then by
    name (weight_name_comparer).  The attn_v / ffn_* counters count tensors in this order."""
    return sorted(range(len(names)), key=lambda i: (_layer_of(names[i]), names[i]))


def _use_more_bits(i_layer: int, n_layers: int) -> bool:
    """The first and last eighth of the layers, and every third layer in between (§9.2)."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def is_70b(arch: str, n_layer: int, n_head: int, n_head_kv: int, n_expert: int = 0) -> bool:
    """llama.cpp's model type LLM_TYPE_70B as set by load_hparams for the arches ms2gguf writes: llama with 80
    layers and GQA (80 layers with MHA is the 65B; 8-expert llamas are typed by a different table), qwen2 with 80."""
    if arch == "llama":
        return n_expert != 8 and n_layer == 80 and n_head != n_head_kv
    if arch == "qwen2":
        return n_layer == 80
    return False


# ---------------------------------------------------------------------------------------------------------------
# the rules


_FALLBACK = {T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0, T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0}   # §9.6 (2026)


def _block(qtype) -> int:
    return GGML_QUANT_SIZES[T(qtype)][0]


def _fallback(qtype, ncols: int):
    """tensor_type_fallback (§9.6): a K-quant whose 256-block does not divide the row length takes a 32-block type;
    F16 when that does not divide either.  Returns (type, note)."""
    if ncols % _block(qtype) == 0:
        return qtype, None
    chosen = _FALLBACK.get(qtype)
    if chosen is None:
        # llama-quantize stops with "no tensor type fallback is defined"; a converter can still write F16
        chosen = T.F16
        return chosen, (f"row length {ncols} is not a multiple of {_block(qtype)}: F16 instead of {qtype.name} "
                        "(llama-quantize has no fallback for this)")
    if ncols % _block(chosen):
        chosen = T.F16
    return chosen, (f"row length {ncols} is not a multiple of {_block(qtype)}: {chosen.name} instead of "
                    f"{qtype.name} (llama-quantize fallback)")


def assign_types(tensors, preset: Preset, n_head: int, n_head_kv: int, n_layer: int, n_expert: int = 0,
                 arch: str = "llama", model_70b: bool | None = None, has_imatrix: bool = False):
    """ggml type and note for every output tensor.

    ``tensors``: all output tensors as (GGUF name, numpy shape) — the whole model, since the rules count attn_v
    tensors and look for output.weight.  Returns [(GGMLQuantizationType, note or None)] in the same order; a note
    explains a fallback.  ``model_70b`` None: decided by :func:`is_70b`.

    ``has_imatrix``: quantizing with an importance matrix, which only llama-quantize does; so every quantized
    preset then follows its rules, the legacy ones (q4_0 ... q8_0) included (output.weight Q6_K, attn_v / attn_k
    Q8_0 with 8 experts, ...), plus the one rule that needs the matrix (Q4_0 / Q5_0: ffn_down of the first
    eighth of the layers Q4_1 / Q5_1)."""
    tensors = [(name, tuple(shape)) for name, shape in tensors]
    names = [name for name, _ in tensors]
    if len(set(names)) != len(names):
        raise ValueError("duplicate tensor names")
    result = [None] * len(tensors)

    if not preset.mixing and not (has_imatrix and preset.quantized):
        for i, (name, shape) in enumerate(tensors):
            if not quantizable(name, shape) or preset.base == T.F32:
                result[i] = (T.F32, None)
            elif shape[-1] % _block(preset.base):
                result[i] = (T.F16, f"row length {shape[-1]} is not a multiple of {_block(preset.base)}: "
                                    f"F16 instead of {preset.base.name}")
            else:
                result[i] = (preset.base, None)
        return result

    if model_70b is None:
        model_70b = is_70b(arch, n_layer, n_head, n_head_kv, n_expert)
    ctx = _Context(preset, n_head, n_head_kv, n_layer, n_expert, arch, model_70b, has_imatrix,
                   has_output=any(_category(n) == _OUTPUT for n in names),
                   n_attention_wv=sum(_category(n) in _ATTN_V_LIKE for n in names))
    for i in _visit_order(names):
        name, shape = tensors[i]
        if not quantizable(name, shape):
            result[i] = (T.F32, None)
            continue
        chosen = ctx.choose(name, shape)
        result[i] = _fallback(chosen, shape[-1])
    return result


class _Context:
    """quantize_state_impl: the model facts and the running counters of llama_tensor_get_type_impl."""

    def __init__(self, preset, n_head, n_head_kv, n_layer, n_expert, arch, model_70b, has_imatrix, has_output,
                 n_attention_wv):
        self.ftype = preset.file_type
        self.has_imatrix = has_imatrix
        self.base = preset.base
        self.n_gqa = n_head // n_head_kv if n_head_kv else 0     # hparams.n_gqa()
        self.n_layer = n_layer
        self.n_expert = n_expert
        self.falcon = arch == "falcon"
        self.model_70b = model_70b
        self.has_tied_embeddings = not has_output
        self.n_attention_wv = n_attention_wv
        self.i_attention_wv = 0
        self.i_ffn_down = 0

    def _ffn_layer(self, counter: int, name: str) -> int:
        """layer_info: the running counter, or with experts the layer parsed from the name (experts of one layer
        need not be consecutive)."""
        if max(1, self.n_expert) <= 1:
            return counter
        layer = _layer_of(name)
        if not 0 <= layer < self.n_layer:
            raise ValueError(f"cannot determine the layer of tensor '{name}' (must be blk.N. with N < {self.n_layer})")
        return layer

    def choose(self, name, shape):
        ft, base = self.ftype, self.base
        cat = _category(name)
        new = base

        # §9.4 output.weight, or token_embd.weight when it doubles as the output (tied): Q6_K; Q8_0 when the
        # base type's block does not divide the row (or falcon); a Q8_0 base stays Q8_0
        if cat == _OUTPUT or (self.has_tied_embeddings and cat == _TOKEN_EMBD):
            if self.falcon or shape[-1] % _block(base):
                return T.Q8_0
            return T.Q6_K if base != T.Q8_0 else base

        if cat == _TOKEN_EMBD:              # untied token_embd: the base type
            return base

        if cat in _ATTN_V_LIKE:
            i = self.i_attention_wv
            if ft == FT.MOSTLY_Q2_K:
                new = T.Q4_K if self.n_gqa >= 4 else T.Q3_K
            elif ft == FT.MOSTLY_Q3_K_M:
                new = T.Q5_K if i < 2 else T.Q4_K
            elif ft == FT.MOSTLY_Q3_K_L:
                new = T.Q5_K
            elif ft in (FT.MOSTLY_Q4_K_M, FT.MOSTLY_Q5_K_M) and _use_more_bits(i, self.n_attention_wv):
                new = T.Q6_K
            elif ft == FT.MOSTLY_Q4_K_S and i < 4:
                new = T.Q5_K
            if self.model_70b and new in (T.Q3_K, T.Q4_K):   # 70B: attn_v is 8x smaller than attn_q
                new = T.Q5_K
            if self.n_expert == 8:
                new = T.Q8_0
            self.i_attention_wv += 1
            return new

        if cat == _ATTN_K:
            return T.Q8_0 if self.n_expert == 8 else new

        if cat == _FFN_DOWN:
            i = self._ffn_layer(self.i_ffn_down, name)
            n = self.n_layer
            if ft == FT.MOSTLY_Q2_K:
                new = T.Q3_K
            elif ft == FT.MOSTLY_Q3_K_M:
                new = T.Q5_K if i < n // 16 else (
                    T.Q4_K if not self.falcon or _use_more_bits(i, n) else T.Q3_K)
            elif ft == FT.MOSTLY_Q3_K_L:
                new = T.Q4_K if self.falcon else T.Q5_K
            elif ft == FT.MOSTLY_Q4_K_M:
                if self.falcon:
                    new = T.Q6_K if i < n // 16 else (T.Q5_K if _use_more_bits(i, n) else T.Q4_K)
                elif _use_more_bits(i, n):
                    new = T.Q6_K
            elif ft == FT.MOSTLY_Q5_K_M and _use_more_bits(i, n):
                new = T.Q6_K
            elif ft == FT.MOSTLY_Q4_K_S and not self.falcon and i < n // 8:
                new = T.Q5_K
            elif ft in (FT.MOSTLY_Q4_0, FT.MOSTLY_Q5_0) and self.has_imatrix and i < n // 8:
                new = T.Q4_1 if ft == FT.MOSTLY_Q4_0 else T.Q5_1     # "guard against craziness" (llama-quant.cpp)
            self.i_ffn_down += 1
            return new

        if cat == _ATTN_OUTPUT:
            if not self.falcon:
                if self.n_expert == 8:
                    if ft in (FT.MOSTLY_Q2_K, FT.MOSTLY_Q3_K_S, FT.MOSTLY_Q3_K_M, FT.MOSTLY_Q4_K_S,
                              FT.MOSTLY_Q4_K_M):
                        new = T.Q5_K
                elif ft == FT.MOSTLY_Q2_K:
                    new = T.Q3_K
                elif ft == FT.MOSTLY_Q3_K_M:
                    new = T.Q4_K
                elif ft == FT.MOSTLY_Q3_K_L:
                    new = T.Q5_K
            elif ft == FT.MOSTLY_Q3_K_L:
                new = T.Q4_K
            return new

        if cat in (_FFN_GATE, _FFN_UP):
            # only IQ3_XS changes these; llama.cpp still resolves the layer (and fails on unparsable MoE names)
            self._ffn_layer(0, name)
        # attn_q and everything else: the base type
        return new
