"""The conversion plan: every checkpoint entry accounted for, every GGUF tensor with its rows and type.

Planning reads only names and shapes. It decides what each entry becomes (mapped, skipped with a reason,
or an error), cross-checks the config against the shapes, and fixes each output tensor's row selection
(split / permutation), shape and ggml type, so the writer can lay out the header before any data.
"""

from dataclasses import dataclass, field

import numpy as np

from msckpt.classify import GROUP_TITLES, group_of

from . import encode, generated, hparams, quant_policy, transforms
from .errors import ConvertError
from .maps import SPLITS


@dataclass
class Output:
    name: str
    source: object            # msckpt Tensor, or a generated.GeneratedTensor computed from the config
    rows: object              # np.ndarray of source rows, or None for all rows in order
    shape: tuple
    ggml_type: int = 0
    note: str | None = None
    transform: str = ""       # what was done, for --verbose / --dry-run

    @property
    def raw_copy(self):
        return self.copies_as(self.ggml_type)

    def copies_as(self, ggml_type):
        """True when the output bytes in this type are exactly byte ranges of the checkpoint file."""
        return (self.rows is None and self.source.byte_ranges() is not None
                and encode.SAME_BYTES.get(self.source.dtype.name) == ggml_type)


@dataclass
class Plan:
    outputs: list
    skipped: list             # (name, reason)
    hp: dict
    num_layers: int
    notes: list = field(default_factory=list)
    arch: str = "llama"

    def types(self, outtype):
        """[(ggml type, fallback note)] per output for an --outtype preset: llama-quantize's per-tensor mixing
        for the K-quant presets, one type for every weight otherwise (gguf_out/quant_policy.py)."""
        return quant_policy.assign_types([(o.name, o.shape) for o in self.outputs], quant_policy.preset(outtype),
                                         n_head=int(self.hp["num_heads"]), n_head_kv=int(self.hp["num_kv_heads"]),
                                         n_layer=self.num_layers, arch=self.arch)


@dataclass
class Options:
    outtype: str = "f16"
    rope_layout: str = "hf"           # "hf": rotate_half (MindFormers >= r0.7), "meta": interleaved (<= r0.6)
    fused_layout: str | None = None    # None: from the config's layout flags, else the map's default (fused_layouts)
    train_tp: int = 1                  # tensor-parallel degree of training (rank-blocked contiguous tensors)


def classify_entries(ckpt, fmap):
    """(mapped [(tensor, rule, layer)], skipped [(name, reason)]); unmapped entries are an error."""
    mapped, skipped, unmapped = [], [], []
    for tensor in ckpt:
        rule, layer = fmap.rule_for(tensor.name)
        if rule is not None:
            mapped.append((tensor, rule, layer))
            continue
        group = group_of(tensor)
        if group in fmap.skip_groups:
            skipped.append((tensor.name, GROUP_TITLES[group]))
        elif fmap.skipped_by_name(tensor.name):
            skipped.append((tensor.name, "skipped by the map's name rules"))
        else:
            unmapped.append(tensor)
    if unmapped:
        first = unmapped[0]
        more = f" (and {len(unmapped) - 1} more: {', '.join(t.name for t in unmapped[1:4])}" \
               f"{', ...' if len(unmapped) > 4 else ''})" if len(unmapped) > 1 else ""
        raise ConvertError(f"{ckpt.path}: unmapped tensor '{first.name}' {list(first.shape)}{more}; the map "
                           f"'{fmap.family}' ({fmap.path}) has no rule for it — wrong map, or a family this map "
                           "does not cover")
    return mapped, skipped


def _observe(mapped, fmap, ckpt_path):
    """Hyperparameters as the tensor shapes tell them: {name: (value, 'which tensor')}."""
    observed = {}
    layers = {layer for _, _, layer in mapped if layer >= 0}
    if layers:
        observed["num_layers"] = (max(layers) + 1, f"layer indices (0..{max(layers)})")
    for tensor, rule, layer in mapped:
        if rule.split and not rule.regroup:
            continue
        spec = fmap.shapes.get(rule.targets[0])
        if not spec or len(spec) != len(tensor.shape):
            continue
        for symbol, value in zip(spec, tensor.shape):
            what = f"'{tensor.name}' {list(tensor.shape)}"
            if symbol in observed and observed[symbol][0] != value:
                raise ConvertError(f"{ckpt_path}: inconsistent shapes: {observed[symbol][1]} gives {symbol} = "
                                   f"{observed[symbol][0]} but {what} gives {value}")
            observed.setdefault(symbol, (value, what))
    return observed


def build(ckpt, fmap, config, config_path, options):
    mapped, skipped = classify_entries(ckpt, fmap)
    if not mapped:
        raise ConvertError(f"{ckpt.path}: no model weights matched the map '{fmap.family}'")
    for tensor, _, _ in mapped:
        encode.check_float(tensor)
    hp = hparams.resolve(fmap, config, config_path)
    hparams.complete(hp, _observe(mapped, fmap, ckpt.path), config_path)
    num_layers = int(hp["num_layers"])
    layouts = fused_layouts(fmap, config, options)

    outputs = [Output(t.name, t, None, t.shape, transform=f"generated: {t.what}")
               for t in generated.tensors(fmap, hp, config, config_path)]
    permute = fmap.permutes_rope(config) and options.rope_layout == "hf"
    # map order, layer by layer: the GGUF does not depend on the order of the checkpoint's files and records
    order = {id(rule): k for k, rule in enumerate(fmap.rules)}
    for tensor, rule, layer in sorted(mapped, key=lambda m: (m[2], order[id(m[1])])):
        if layer >= num_layers:
            raise ConvertError(f"{ckpt.path}: '{tensor.name}' is layer {layer}, but the model has {num_layers} "
                               "layers")
        for name, rows, what in _target_rows(tensor, rule, layer, hp, options, layouts, permute, ckpt.path):
            shape = (len(rows),) + tuple(tensor.shape[1:]) if rows is not None else tuple(tensor.shape)
            outputs.append(Output(name, tensor, rows, shape, transform=what))

    _check_outputs(outputs, fmap, hp, num_layers, ckpt.path)
    _check_untied_output(outputs, fmap, hp, ckpt.path)
    plan = Plan(outputs, skipped, hp, num_layers, _config_notes(config, config_path), fmap.arch)
    for out, (ggml_type, note) in zip(outputs, plan.types(options.outtype)):
        out.ggml_type, out.note = ggml_type, note
    plan.notes += [f"{out.name}: {out.note}" for out in outputs if out.note]
    return plan


def fused_layouts(fmap, config, options):
    """Row layout of each kind of fused tensor ("qkv", "gate_up", or a map's named kind such as "mcore_qkv"):
    --fused-layout if given, else the first of the map's config flags the config sets (e.g.
    use_contiguous_weight_layout_attention), else the map's default."""
    layouts = {}
    for kind in [*SPLITS, *(k for k in fmap.fused_layout if k not in SPLITS)]:
        spec = fmap.fused_layout.get(kind, {})
        layout = options.fused_layout
        for flag, (if_true, if_false) in spec.get("flags", {}).items():
            if layout is None and isinstance(config.get(flag), bool):
                layout = if_true if config[flag] else if_false
        layouts[kind] = layout or spec.get("default", "interleaved")
    return layouts


def _check_untied_output(outputs, fmap, hp, ckpt_path):
    """Without output.weight llama.cpp ties the output to token_embd: only right if the model was tied."""
    sources = [rule.source for rule in fmap.rules if "output.weight" in rule.targets]
    if hp.get("tie_word_embeddings") is False and sources and not any(o.name == "output.weight" for o in outputs):
        raise ConvertError(f"{ckpt_path}: no {' / '.join(sources)}, but {hp.source['tie_word_embeddings']} is "
                           "false; without it llama.cpp would reuse the token embedding as the output projection")


def _config_notes(config, config_path):
    """Warnings about config settings the GGUF cannot carry."""
    window = config.get("sliding_window")
    if config.get("use_sliding_window") or (window and "use_sliding_window" not in config):
        return [f"{config_path}: sliding-window attention (sliding_window {window}) is ignored; llama.cpp runs "
                "this architecture with full attention, which differs only beyond the window"]
    return []


def _target_rows(tensor, rule, layer, hp, options, layouts, permute, ckpt_path):
    names = rule.target_names(layer)
    n_rows = tensor.shape[0] if tensor.shape else 0
    layout = layouts.get(rule.layout)
    if rule.split == "qkv":
        expected = hp["q_width"] + 2 * hp["kv_width"]
        if n_rows != expected:
            raise ConvertError(f"{ckpt_path}: fused '{tensor.name}' has {n_rows} rows; num_heads {hp['num_heads']}, "
                               f"num_kv_heads {hp['num_kv_heads']} and head_dim {hp['head_dim']} need {expected}")
        tp = _rank_blocks(options.train_tp, (hp["num_heads"], hp["num_kv_heads"]), layout)
        parts = transforms.split_qkv_rows(hp["num_heads"], hp["num_kv_heads"], hp["head_dim"], layout, tp)
        what = [f"split {layout} QKV: {p}" for p in ("Q", "K", "V")]
    elif rule.split == "gate_up":
        if n_rows != 2 * hp["ffn_size"]:
            raise ConvertError(f"{ckpt_path}: fused '{tensor.name}' has {n_rows} rows; ffn size "
                               f"{hp['ffn_size']} needs {2 * hp['ffn_size']}")
        tp = _rank_blocks(options.train_tp, (hp["ffn_size"],), layout)
        parts = transforms.split_gate_up_rows(hp["ffn_size"], layout, tp)
        what = [f"split {layout} gate/up: {p}" for p in ("gate", "up")]
    else:
        parts, what = [None], [""]
    if rule.regroup:        # one output: the parts in llama.cpp's order; identity rows copy as they are
        joined = np.concatenate(parts)
        parts = [None if np.array_equal(joined, np.arange(n_rows)) else joined]
        what = ["" if parts[0] is None else f"regroup {layout} {'QKV' if rule.split == 'qkv' else 'gate/up'}"]

    for name, rows, kind, text in zip(names, parts, rule.permutes, what):
        if kind == "qkv" and permute:
            if n_rows != hp["qkv_width"]:
                raise ConvertError(f"{ckpt_path}: fused '{tensor.name}' has {n_rows} rows; num_heads "
                                   f"{hp['num_heads']}, num_kv_heads {hp['num_kv_heads']} and head_dim "
                                   f"{hp['head_dim']} need {hp['qkv_width']}")
            perm = transforms.permute_fused_qkv_rows(hp["num_heads"], hp["num_kv_heads"], hp["head_dim"])
            rows = perm if rows is None else rows[perm]
            text = (text + ", " if text else "") + (f"rope permutation of Q ({hp['num_heads']} heads) and K "
                                                    f"({hp['num_kv_heads']} heads)")
        elif kind and permute:
            heads = hp["num_heads"] if kind == "q" else hp["num_kv_heads"]
            count = len(rows) if rows is not None else n_rows
            perm = transforms.permute_rows(heads, count)
            rows = perm if rows is None else rows[perm]
            text = (text + ", " if text else "") + f"rope permutation ({heads} heads)"
        yield name, rows, text


def _rank_blocks(tp, sizes, layout):
    """How many rank blocks a fused tensor of this layout has: the training TP degree for contiguous
    layouts, 1 for interleaved ones (they are the same for any tensor-parallel degree)."""
    if layout != "contiguous":
        return 1
    if tp < 1 or any(s % tp for s in sizes):
        raise ConvertError(f"--train-tp {tp} does not divide {', '.join(map(str, sizes))}")
    return tp


def _check_outputs(outputs, fmap, hp, num_layers, ckpt_path):
    seen = {}
    for out in outputs:
        if out.name in seen:
            raise ConvertError(f"{ckpt_path}: both '{seen[out.name]}' and '{out.source.name}' map to GGUF tensor "
                               f"'{out.name}'")
        seen[out.name] = out.source.name
        spec = fmap.shapes.get(_pattern(out.name))
        if spec:
            expected = tuple(int(hp[s]) if isinstance(s, str) else s for s in spec)
            if out.shape != expected:
                described = " x ".join(f"{s}={hp[s]}" if isinstance(s, str) else str(s) for s in spec)
                raise ConvertError(f"{ckpt_path}: '{out.source.name}' gives {out.name} shape {list(out.shape)}, "
                                   f"but the config says {list(expected)} ({described})")
    missing = []
    for pattern in fmap.required:
        for layer in (range(num_layers) if "{i}" in pattern else [None]):
            name = pattern.replace("{i}", str(layer)) if layer is not None else pattern
            if name not in seen:
                missing.append(name)
    if missing:
        raise ConvertError(f"{ckpt_path}: the checkpoint lacks tensors GGUF '{fmap.arch}' requires: "
                           f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")


def _pattern(name):
    parts = name.split(".")
    if len(parts) > 1 and parts[0] == "blk":
        parts[1] = "{i}"
    return ".".join(parts)


def row_blocks(out):
    """Yield the output's rows in blocks as arrays of the checkpoint dtype (bounded memory)."""
    tensor = out.source
    if not out.shape:
        yield tensor.array().reshape(1)
        return
    step = encode.rows_per_chunk(out.shape)
    for start in range(0, out.shape[0], step):
        stop = min(out.shape[0], start + step)
        if out.rows is None:
            yield tensor.rows(start, stop)
        else:
            # transforms only reorder rows locally (within heads / groups), so a block of output rows
            # comes from a narrow band of source rows: read that band, then pick from it
            idx = out.rows[start:stop]
            lo, hi = int(idx.min()), int(idx.max()) + 1
            yield tensor.rows(lo, hi)[idx - lo]
