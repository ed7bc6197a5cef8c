"""Write a Llama-shaped MindSpore checkpoint of a requested size, in the real ``.ckpt`` wire format.

    python bench/make_checkpoint.py /work/bench-data/f16 --dtype f16            # ~2.1 GB (default shape)
    python bench/make_checkpoint.py /work/bench-data/f32 --dtype f32 --hidden 2048 --heads 16 --kv-heads 4 --size 1.2e9

The output directory gets ``model.ckpt``, a MindFormers-style ``config.yaml`` (structure copied from
tests/fixtures/llama/mha/config.yaml) and a copy of the project's tokenizer fixture as ``tokenizer.model``,
so ``ms2gguf DIR/model.ckpt llama2 OUT.gguf`` finds everything beside the checkpoint.

Wire format (shared/reference/ckpt-format.md §2-5): the file is a concatenation of ``Checkpoint`` messages, one
``Value`` each::

    0A <L> | 0A <n> tag | 12 <m> | 08 d0 08 d1 ... | 12 <k> "Float16" | 1A <N> <N content bytes>

Tensors larger than 512 MiB are written the way MindSpore's Tensor path does (§5.1): the raw bytes are cut into
536 870 912-byte chunks, each its own record with the same tag, the full dims and the same tensor_type. The
default shape (vocab 84992 x hidden 4096, f16 = 696 MB) makes both the embedding and lm_head 2 records each.

Names are MindFormers legacy Llama names (model.tok_embeddings.embedding_weight, model.layers.N.attention.wq.weight,
..., model.norm_out.weight, lm_head.weight) in the record order of a real MindFormers checkpoint. 2-D weights
use ``--dtype``; RMSNorm weights are Float32, as MindFormers keeps them (layernorm_compute_type float32).

``--sparse`` writes only the record headers and leaves the contents as holes, e.g. a Llama-2-70B-shaped
138 GB file that takes a few MB of disk, to show that indexing cost does not depend on the file size::

    python bench/make_checkpoint.py /work/bench-data/sparse70b --sparse --hidden 8192 --heads 64 --kv-heads 8 \
        --vocab 32000 --layers 80 --multiple-of 4096 --ffn-dim-multiplier 1.3

Data is random (normal, std 0.02; norms around 1), generated and written in chunks of ``--chunk-mb`` so memory
stays small whatever the size. Each tensor's values come from its own seeded generator, so ``--verify`` can
regenerate the first chunk of every tensor and compare it with what msckpt reads back.
"""

import argparse
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
TOKENIZER = REPO / "tests" / "fixtures" / "llama" / "tokenizer" / "tokenizer.model"
TOKENIZER_PIECES = 480
QWEN_TOKENIZER = REPO / "tests" / "fixtures" / "qwen2" / "tokenizer"
SLICE_BYTES = 512 * 1024 * 1024            # MindSpore SLICE_SIZE (512 * 1024 KB), ckpt-format.md §5.1

DTYPES = {  # --dtype -> (tensor_type, itemsize, MindFormers param_init_type)
    "f16": ("Float16", 2, "float16"),
    "f32": ("Float32", 4, "float32"),
    "bf16": ("BFloat16", 2, "bfloat16"),
}


# ----------------------------------------------------------------------------------------------- wire format

def varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field_len(number, payload_len):
    """Key + length prefix of a LEN field (wire type 2)."""
    return varint(number << 3 | 2) + varint(payload_len)


def record_header(tag, dims, tensor_type, content_len):
    """Every byte of one Checkpoint record except the tensor_content payload itself."""
    tag_b = tag.encode()
    tensor_head = b"".join(b"\x08" + varint(d) for d in dims)          # dims: unpacked varints, key 0x08
    tensor_head += field_len(2, len(tensor_type)) + tensor_type.encode()  # tensor_type, key 0x12
    tensor_head += field_len(3, content_len)                          # tensor_content, key 0x1a
    tensor_len = len(tensor_head) + content_len
    value = field_len(1, len(tag_b)) + tag_b + field_len(2, tensor_len)    # Value.tag 0x0a, Value.tensor 0x12
    value_len = len(value) + tensor_len
    return field_len(1, value_len) + value + tensor_head               # Checkpoint.value 0x0a


# ----------------------------------------------------------------------------------------------- model shape

def llama_ffn(hidden, multiple_of, ffn_dim_multiplier=None):
    dim = int(2 * (4 * hidden) / 3)
    if ffn_dim_multiplier is not None:
        dim = int((ffn_dim_multiplier + 0.01) * dim)
    return multiple_of * math.ceil(dim / multiple_of)


def layer_tensors(i, hidden, q_width, kv_width, ffn):
    """(name, shape, is_norm) of one layer, in MindFormers' parameter order (as in the mha fixture)."""
    p = f"model.layers.{i}."
    return [
        (p + "ffn_norm.weight", (hidden,), True),
        (p + "attention_norm.weight", (hidden,), True),
        (p + "attention.wq.weight", (q_width, hidden), False),
        (p + "attention.wk.weight", (kv_width, hidden), False),
        (p + "attention.wv.weight", (kv_width, hidden), False),
        (p + "attention.wo.weight", (hidden, q_width), False),
        (p + "feed_forward.w1.weight", (ffn, hidden), False),
        (p + "feed_forward.w2.weight", (hidden, ffn), False),
        (p + "feed_forward.w3.weight", (ffn, hidden), False),
    ]


def moe_layer_tensors(i, a):
    """An mcore Qwen3-MoE layer as TrainingQwen3MoeForCausalLM saves it (moe-families.md §3.1): 2-D experts
    weight1 [E*H, 2F] and weight2 [E*F, H], fused linear_qkv, q/k norms, the router and its fi_accu buffer."""
    p, hd = f"decoder.layers.{i}.", a.head_dim
    return [
        (p + "input_layernorm.weight", (a.hidden,), True),
        (p + "self_attention.linear_proj.weight", (a.hidden, a.heads * hd), False),
        (p + "self_attention.linear_qkv.weight", ((a.heads + 2 * a.kv_heads) * hd, a.hidden), False),
        (p + "self_attention.q_layernorm.weight", (hd,), True),
        (p + "self_attention.k_layernorm.weight", (hd,), True),
        (p + "pre_mlp_layernorm.weight", (a.hidden,), True),
        (p + "mlp.router.weight", (a.experts, a.hidden), True),
        (p + "mlp.router.fi_accu", (a.experts,), True),
        (p + "mlp.experts.weight1", (a.experts * a.hidden, 2 * a.moe_ffn), False),
        (p + "mlp.experts.weight2", (a.experts * a.moe_ffn, a.hidden), False),
    ]


def tensor_list(a, layers):
    if a.family == "qwen3_moe":
        out = [("embedding.word_embeddings.weight", (a.vocab, a.hidden), False)]
        for i in range(layers):
            out += moe_layer_tensors(i, a)
        out += [("decoder.final_layernorm.weight", (a.hidden,), True), ("output_layer.weight", (a.vocab, a.hidden),
                                                                         False)]
        return out, a.moe_ffn
    head_dim = a.hidden // a.heads
    q_width, kv_width = a.heads * head_dim, a.kv_heads * head_dim
    ffn = llama_ffn(a.hidden, a.multiple_of, a.ffn_dim_multiplier)
    out = [("model.tok_embeddings.embedding_weight", (a.vocab, a.hidden), False)]
    for i in range(layers):
        out += layer_tensors(i, a.hidden, q_width, kv_width, ffn)
    out += [("model.norm_out.weight", (a.hidden,), True), ("lm_head.weight", (a.vocab, a.hidden), False)]
    return out, ffn


def tensor_nbytes(shape, is_norm, itemsize):
    return math.prod(shape) * (4 if is_norm else itemsize)


def choose_layers(a):
    """The smallest layer count (>= 1) that brings the file to at least --size bytes."""
    if a.layers is not None:
        return a.layers
    itemsize = DTYPES[a.dtype][1]
    fixed, _ = tensor_list(a, 0)
    one, _ = tensor_list(a, 1)
    base = sum(tensor_nbytes(s, n, itemsize) for _, s, n in fixed)
    per_layer = sum(tensor_nbytes(s, n, itemsize) for _, s, n in one) - base
    return max(1, math.ceil((a.size - base) / per_layer))


# ----------------------------------------------------------------------------------------------- data

def chunk_stream(seed, index, n_elements, is_norm, dtype, chunk_elems):
    """Yield the tensor's content as little-endian byte chunks of at most chunk_elems elements."""
    rng = np.random.Generator(np.random.PCG64([seed, index]))
    done = 0
    while done < n_elements:
        n = min(chunk_elems, n_elements - done)
        values = rng.standard_normal(n, dtype=np.float32)
        if is_norm:
            values *= 0.05
            values += 1.0
            yield values.astype("<f4").tobytes()
        else:
            values *= 0.02
            if dtype == "f32":
                yield values.astype("<f4").tobytes()
            elif dtype == "f16":
                yield values.astype("<f2").tobytes()
            else:   # bf16: upper 16 bits of the float32, round to nearest even
                bits = values.view(np.uint32)
                bits += 0x7FFF + ((bits >> 16) & 1)
                yield (bits >> 16).astype("<u2").tobytes()
        done += n


def write_checkpoint(path, a):
    tensor_type, itemsize, _ = DTYPES[a.dtype]
    layers = choose_layers(a)
    tensors, ffn = tensor_list(a, layers)
    chunk_elems = (a.chunk_mb << 20) // 4            # elements per generated chunk (divides SLICE_BYTES)
    records = 0
    started = time.perf_counter()
    with open(path, "wb", buffering=0) as f:
        for index, (name, shape, is_norm) in enumerate(tensors):
            ttype = "Float32" if is_norm else tensor_type
            isz = 4 if is_norm else itemsize
            nbytes = math.prod(shape) * isz
            stream = chunk_stream(a.seed, index, math.prod(shape), is_norm, a.dtype, chunk_elems)
            pending = b""
            # Tensor-path slicing: consecutive 512 MiB records, same tag, full dims, same type.
            for start in range(0, nbytes, SLICE_BYTES):
                rec_len = min(SLICE_BYTES, nbytes - start)
                f.write(record_header(name, shape, ttype, rec_len))
                records += 1
                if a.sparse:        # leave the content as a hole: reads back as zeros, costs no disk
                    f.seek(rec_len, os.SEEK_CUR)
                    continue
                left = rec_len
                while left:
                    if not pending:
                        pending = next(stream)
                    take = min(left, len(pending))
                    f.write(pending[:take])
                    pending = pending[take:]
                    left -= take
            if not a.quiet:
                print(f"  {name:42s} {ttype:8s} {'x'.join(map(str, shape)):>12s} "
                      f"{nbytes / 1e6:9.1f} MB  {math.ceil(nbytes / SLICE_BYTES)} record(s)", file=sys.stderr)
        f.truncate(f.tell())     # a sparse file may end in a hole
        if a.fsync:
            os.fsync(f.fileno())
    seconds = time.perf_counter() - started
    return layers, ffn, len(tensors), records, seconds


def write_moe_config(path, a, layers):
    import json

    Path(path).write_text(json.dumps({
        "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": a.hidden,
        "num_hidden_layers": layers, "num_attention_heads": a.heads, "num_key_value_heads": a.kv_heads,
        "head_dim": a.head_dim, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "rope_theta": 1e6,
        "vocab_size": a.vocab, "moe_intermediate_size": a.moe_ffn, "num_experts": a.experts,
        "num_experts_per_tok": 8 if a.experts >= 8 else 2, "norm_topk_prob": True, "tie_word_embeddings": False},
        indent=2) + "\n")


def write_config(path, a, layers):
    _, _, init_type = DTYPES[a.dtype]
    text = f"""\
# ms2gguf benchmark checkpoint - written by bench/make_checkpoint.py (random weights; structure copied from
# tests/fixtures/llama/mha/config.yaml).
seed: {a.seed}
run_mode: predict
use_parallel: false
load_checkpoint: model.ckpt
model:
  model_config:
    type: LlamaConfig
    batch_size: 1
    seq_length: 4096
    hidden_size: {a.hidden}
    num_layers: {layers}
    num_heads: {a.heads}
    n_kv_heads: {a.kv_heads if a.kv_heads != a.heads else 'null'}
    vocab_size: {a.vocab}
    multiple_of: {a.multiple_of}
    ffn_dim_multiplier: {a.ffn_dim_multiplier if a.ffn_dim_multiplier is not None else 'null'}
    rms_norm_eps: 1.0e-05
    theta: 10000.0
    max_position_embedding: 4096
    bos_token_id: 1
    eos_token_id: 2
    pad_token_id: 0
    ignore_token_id: -100
    qkv_concat: false
    qkv_has_bias: false
    tie_word_embeddings: false
    extend_method: None
    scaling_factor: 1.0
    use_past: false
    use_flash_attention: false
    fused_rms_norm: false
    use_rope_slice: true
    compute_dtype: {init_type}
    layernorm_compute_type: float32
    softmax_compute_type: float32
    rotary_dtype: float32
    param_init_type: {init_type}
    checkpoint_name_or_path: ''
  arch:
    type: LlamaForCausalLM
parallel_config:
  data_parallel: 1
  model_parallel: 1
  pipeline_stage: 1
processor:
  return_tensors: ms
  tokenizer:
    unk_token: <unk>
    bos_token: <s>
    eos_token: </s>
    pad_token: <unk>
    type: LlamaTokenizer
    vocab_file: tokenizer.model
  type: LlamaProcessor
"""
    Path(path).write_text(text)


# ----------------------------------------------------------------------------------------------- verification

def verify(path, a):
    """Open with msckpt and check names, shapes, dtypes, record counts and every tensor's first chunk."""
    sys.path.insert(0, str(REPO))
    import msckpt

    tensor_type, itemsize, _ = DTYPES[a.dtype]
    layers = choose_layers(a)
    expected, _ = tensor_list(a, layers)
    chunk_elems = (a.chunk_mb << 20) // 4
    with msckpt.open_checkpoint(path) as ckpt:
        if ckpt.format != "ckpt":
            raise SystemExit(f"verify: format {ckpt.format}")
        got = [(t.name, t.shape, t.dtype.name, t.records) for t in ckpt]
        want = []
        for name, shape, is_norm in expected:
            isz = 4 if is_norm else itemsize
            want.append((name, tuple(shape), "Float32" if is_norm else tensor_type,
                         math.ceil(math.prod(shape) * isz / SLICE_BYTES)))
        if got != want:
            for g, w in zip(got, want):
                if g != w:
                    raise SystemExit(f"verify: got {g}, expected {w}")
            raise SystemExit(f"verify: {len(got)} tensors, expected {len(want)}")
        for index, ((name, shape, is_norm), t) in enumerate(zip(expected, ckpt)):
            if a.sparse:
                break
            first = next(chunk_stream(a.seed, index, math.prod(shape), is_norm, a.dtype, chunk_elems))
            off, n = t.byte_ranges()[0]
            if bytes(t.source.view(off, min(n, len(first)))) != first[:n]:
                raise SystemExit(f"verify: {name}: first chunk differs")
        multi = [t.name for t in ckpt if t.records > 1]
        for name in multi:   # the pieces of a sliced tensor are contiguous 512 MiB chunks, in order
            ranges = ckpt[name].byte_ranges()
            if any(n != SLICE_BYTES for _, n in ranges[:-1]) or sum(n for _, n in ranges) != ckpt[name].nbytes:
                raise SystemExit(f"verify: {name}: unexpected pieces {ranges}")
        return len(got), sum(t.records for t in ckpt), multi


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", help="directory to create: model.ckpt, config.yaml, tokenizer.model")
    p.add_argument("--dtype", choices=list(DTYPES), default="f16", help="dtype of the 2-D weights (default f16)")
    p.add_argument("--size", type=float, default=2.1e9,
                   help="target file size in bytes; picks the layer count (default 2.1e9)")
    p.add_argument("--layers", type=int, help="number of layers (overrides --size)")
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=84992,
                   help="vocab rows (default 84992: 696 MB in f16 -> 2 records; must be >= the tokenizer's "
                   f"{TOKENIZER_PIECES} pieces)")
    p.add_argument("--family", choices=("llama2", "qwen3_moe"), default="llama2",
                   help="llama2: legacy Llama names; qwen3_moe: mcore Qwen3-MoE with 2-D expert tensors")
    p.add_argument("--experts", type=int, default=64, help="qwen3_moe: experts per layer (default 64)")
    p.add_argument("--moe-ffn", type=int, default=3072, help="qwen3_moe: expert ffn size (default 3072)")
    p.add_argument("--head-dim", type=int, default=128, help="qwen3_moe: head dim (default 128)")
    p.add_argument("--multiple-of", type=int, default=256)
    p.add_argument("--ffn-dim-multiplier", type=float, help="MindFormers ffn_dim_multiplier (Llama-2-70B: 1.3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk-mb", type=int, default=16, help="generate data in chunks of this many MiB of f32")
    p.add_argument("--fsync", action="store_true", help="fsync the checkpoint before returning")
    p.add_argument("--sparse", action="store_true", help="write only the record headers and leave every "
                   "tensor's content as a hole (zeros): a huge file that costs no disk, for indexing benchmarks")
    p.add_argument("--no-verify", dest="verify", action="store_false", help="skip the msckpt read-back check")
    p.add_argument("-q", "--quiet", action="store_true")
    a = p.parse_args(argv)
    if a.vocab < TOKENIZER_PIECES:
        p.error(f"--vocab must be >= {TOKENIZER_PIECES} (the tokenizer fixture's pieces)")
    if (a.family == "llama2" and a.hidden % a.heads) or a.heads % a.kv_heads:
        p.error("hidden must be a multiple of heads, heads a multiple of kv-heads")
    if SLICE_BYTES % (a.chunk_mb << 20):
        p.error("--chunk-mb must divide 512")

    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "model.ckpt"
    layers, ffn, n_tensors, n_records, seconds = write_checkpoint(ckpt, a)
    if a.family == "qwen3_moe":
        write_moe_config(out / "config.json", a, layers)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copyfile(QWEN_TOKENIZER / name, out / name)
    else:
        write_config(out / "config.yaml", a, layers)
        shutil.copyfile(TOKENIZER, out / "tokenizer.model")
    size = ckpt.stat().st_size
    print(f"wrote {ckpt}: {size:,} bytes ({size / 1e9:.3f} GB), {a.dtype}, hidden {a.hidden}, layers {layers}, "
          f"heads {a.heads}/{a.kv_heads}, ffn {ffn}, vocab {a.vocab}; {n_tensors} tensors in {n_records} records; "
          f"{seconds:.1f} s")
    if a.verify:
        n, recs, multi = verify(ckpt, a)
        print(f"verified with msckpt: {n} tensors, {recs} records; multi-record tensors: {', '.join(multi) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
