"""Named tensor transforms, each expressed as a row selection.

Every transform the Llama-layout families need reorders or picks whole rows (dim 0) and leaves columns
alone: splitting fused QKV / gate-up tensors and the rotary Q/K permutation. Expressing them as row index
arrays lets the converter stream any transformed tensor in row blocks straight from the memory map,
and compose transforms by indexing one index array with another.
"""

import numpy as np


def permute_rows(n_heads, n_rows):
    """HF rotate_half rows -> llama.cpp NORM-rope rows (gguf-targets.md §4.2).

    Within each head, output row 2i comes from row i and 2i+1 from row hd/2 + i.
    """
    head_dim = n_rows // n_heads
    if n_heads * head_dim != n_rows or head_dim % 2:
        raise ValueError(f"cannot permute {n_rows} rows as {n_heads} heads of even size")
    half = head_dim // 2
    within = np.empty(head_dim, dtype=np.int64)
    within[0::2] = np.arange(half)
    within[1::2] = np.arange(half) + half
    return (np.arange(n_heads)[:, None] * head_dim + within[None, :]).reshape(-1)


def permute_fused_qkv_rows(n_heads, n_kv_heads, head_dim):
    """permute_rows for the Q and K parts of a contiguous [Q; K; V] tensor kept fused; V rows unchanged.

    ChatGLM's use_rearrange_rope stores each Q/K head as [even dims; odd dims] (MindFormers models/glm2
    convert_weight.py rearrange_w / rearrange_b), which is the rotate_half order: this undoes it
    (mindformers-layouts.md §6.6).
    """
    q, kv = n_heads * head_dim, n_kv_heads * head_dim
    return np.concatenate([permute_rows(n_heads, q), q + permute_rows(n_kv_heads, kv), np.arange(q + kv, q + 2 * kv)])


def split_qkv_rows(n_heads, n_kv_heads, head_dim, layout, train_tp=1):
    """Row indices of Q, K and V inside a fused QKV tensor (mindformers-layouts.md §4.3).

    layout "interleaved": per KV group [q (r heads); k; v] (MindFormers >= 1.4 legacy w_qkv, mcore >= 1.7);
    layout "contiguous": [Q; K; V], rank-blocked per tensor-parallel rank when trained with tp > 1.
    """
    q, kv = n_heads * head_dim, n_kv_heads * head_dim
    if layout == "interleaved":
        r = n_heads // n_kv_heads
        group = (r + 2) * head_dim
        base = np.arange(n_kv_heads)[:, None] * group
        q_rows = (base + np.arange(r * head_dim)[None, :]).reshape(-1)
        k_rows = (base + r * head_dim + np.arange(head_dim)[None, :]).reshape(-1)
        v_rows = (base + (r + 1) * head_dim + np.arange(head_dim)[None, :]).reshape(-1)
        return q_rows, k_rows, v_rows
    if layout == "contiguous":
        block = (q + 2 * kv) // train_tp
        qb, kb = q // train_tp, kv // train_tp
        starts = np.arange(train_tp)[:, None] * block
        q_rows = (starts + np.arange(qb)[None, :]).reshape(-1)
        k_rows = (starts + qb + np.arange(kb)[None, :]).reshape(-1)
        v_rows = (starts + qb + kb + np.arange(kb)[None, :]).reshape(-1)
        return q_rows, k_rows, v_rows
    raise ValueError(f"unknown fused layout {layout!r}")


def split_gate_up_rows(ffn_size, layout, train_tp=1):
    """Row indices of gate and up inside a fused [2F, H] tensor (row-interleaved or [gate; up])."""
    if layout == "interleaved":
        rows = np.arange(ffn_size)
        return rows * 2, rows * 2 + 1
    if layout == "contiguous":
        block, half = 2 * ffn_size // train_tp, ffn_size // train_tp
        starts = np.arange(train_tp)[:, None] * block
        return ((starts + np.arange(half)[None, :]).reshape(-1),
                (starts + half + np.arange(half)[None, :]).reshape(-1))
    raise ValueError(f"unknown fused layout {layout!r}")
