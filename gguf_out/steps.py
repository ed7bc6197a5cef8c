"""The step vocabulary of map rules: how checkpoint tensors become GGUF tensors (maps/*.json ``steps``).

A rule's ``steps`` act on a list of tensor expressions (gguf_out/tensor_expr.py), starting from the rule's
source (one tensor, several stacked experts, or several concatenated tensors). Each step acts on every tensor in
the list; a split fans each one out into several, so the list ends with one expression per GGUF target:

    {"reshape": [dim, ...]}             C-order reshape; dims are numbers, hyperparameters ("hidden_size"),
                                        products ("2*expert_ffn_size") or -1
    {"split": {"axis": a, "parts": n}}  n equal parts along axis a
    {"split": {"axis": a, "sizes": [...]}}  parts of the given sizes
    {"split": "qkv"} / {"split": "gate_up"}  MindFormers' fused QKV / gate-up tensors, rows laid out as the
                                        fused layout says (interleaved or contiguous, --train-tp blocks)
    {"regroup": "qkv"} / {"regroup": "gate_up"}  such a tensor kept fused, its rows put in llama.cpp's [Q; K; V] /
                                        [gate; up] order (unchanged when they already are)
    {"transpose": [axes]}               numpy transpose
    {"permute": "q" | "k" | [per part]} the rotary Q/K row permutation (HF rotate_half -> llama.cpp NORM rope);
                                        "qkv": of the Q and K rows of a [Q; K; V] tensor kept fused
    {"scale": "hyperparameter"}         multiply by that value (skipped when it is 1)
    {"reinterleave": axis}              rope rows stored de-interleaved ([x0, x2, ...; x1, x3, ...]) back to pairs
                                        (the axis is one rope block)
    {"concat": axis}                    join the whole list into one tensor along the axis
    {"each": [[steps], [steps], ...]}   different steps for each tensor of the list, in order

A rule with several sources starts with one tensor per source; without steps they are concatenated on axis 0.
Dimensions are numbers, hyperparameters or sums of products of them ("kv_lora_rank+qk_rope_head_dim").

Named transforms that need model facts (fused layouts, head counts) get them from a StepContext.
"""

from dataclasses import dataclass, field

import numpy as np

from . import tensor_expr as X
from . import transforms
from .errors import ConvertError

NAMED_SPLITS = {"qkv": ("Q", "K", "V"), "gate_up": ("gate", "up")}
KINDS = ("reshape", "split", "regroup", "transpose", "permute", "scale", "reinterleave", "concat", "each")


@dataclass
class StepContext:
    hp: dict
    layouts: dict = field(default_factory=dict)      # {"qkv"|"gate_up": "interleaved"|"contiguous"}
    train_tp: int = 1
    permute: bool = True                             # apply rope permutations ("hf" rope layout)
    where: str = ""                                  # the checkpoint, for messages


def fan_out(steps, where, count=1):
    """How many tensors ``steps`` turn ``count`` sources into (and a check of their syntax)."""
    for step in steps:
        if not isinstance(step, dict) or len(step) != 1 or next(iter(step)) not in KINDS:
            raise ConvertError(f"{where}: bad step {step!r} (one of {', '.join(KINDS)} per step)")
        kind, arg = next(iter(step.items()))
        if kind == "split":
            count *= _parts(arg, where)
        elif kind == "concat":
            count = 1
        elif kind == "each":
            if not isinstance(arg, list) or len(arg) != count:
                raise ConvertError(f"{where}: 'each' needs one list of steps per tensor ({count})")
            counts = {fan_out(sub, where) for sub in arg}
            if len(counts) != 1:
                raise ConvertError(f"{where}: the step lists of 'each' must give the same number of tensors")
            count *= counts.pop()
        elif kind == "regroup" and arg not in NAMED_SPLITS:
            raise ConvertError(f"{where}: bad regroup {arg!r} (\"qkv\" or \"gate_up\")")
        elif kind == "permute" and isinstance(arg, list) and len(arg) != count:
            raise ConvertError(f"{where}: 'permute' lists {len(arg)} entries for {count} tensors")
    return count


def _parts(arg, where):
    if isinstance(arg, str) and arg in NAMED_SPLITS:
        return len(NAMED_SPLITS[arg])
    if isinstance(arg, dict) and isinstance(arg.get("axis"), int):
        if isinstance(arg.get("parts"), int) and arg["parts"] > 0:
            return arg["parts"]
        if isinstance(arg.get("sizes"), list) and arg["sizes"]:
            return len(arg["sizes"])
    raise ConvertError(f"{where}: bad split {arg!r} (\"qkv\", \"gate_up\", or {{\"axis\": a, \"parts\": n}} / "
                       "{\"axis\": a, \"sizes\": [...]})")


def dim(spec, hp, where):
    """A dimension: an int, a hyperparameter name, or a sum of products of those ("2*expert_ffn_size",
    "kv_lora_rank+qk_rope_head_dim")."""
    if isinstance(spec, int) and not isinstance(spec, bool):
        return spec
    if not isinstance(spec, str):
        raise ConvertError(f"{where}: bad dimension {spec!r}")
    total = 0
    for term in spec.split("+"):
        value = 1
        for factor in term.split("*"):
            factor = factor.strip()
            if factor.isdigit():
                value *= int(factor)
            elif hp.get(factor) is not None:
                value *= int(hp[factor])
            else:
                raise ConvertError(f"{where}: dimension '{spec}' needs {factor}, which neither the config nor the "
                                   "tensors give")
        total += value
    return total


def apply(steps, sources, ctx, tensor_name):
    """[(expression, description)] for one rule application, in target order. ``sources``: one expression or a
    list of them (one per source pattern)."""
    items = [(s, []) for s in sources] if isinstance(sources, list) else [(sources, [])]
    for step in steps:
        kind, arg = next(iter(step.items()))
        if kind == "concat":
            what = [w for _, ws in items for w in ws]
            try:
                joined = X.Concat([e for e, _ in items], arg)
            except ValueError as err:
                raise ConvertError(f"{ctx.where}: '{tensor_name}': {err}") from None
            items = [(joined, what + [f"{len(items)} joined on axis {arg}"])]
            continue
        if kind == "each":
            out = []
            for (expr, what), sub in zip(items, arg):
                out += [(e, what + w) for e, w in _apply_each(sub, expr, ctx, tensor_name)]
            items = out
            continue
        out = []
        for k, (expr, what) in enumerate(items):
            for new, text in _step(kind, arg, expr, ctx, tensor_name, k):
                out.append((new, what + ([text] if text else [])))
        items = out
    return [(expr, ", ".join(what)) for expr, what in items]


def _apply_each(steps, expr, ctx, tensor_name):
    return [(e, [w] if w else []) for e, w in apply(steps, expr, ctx, tensor_name)]


def _step(kind, arg, expr, ctx, name, k):
    where = f"{ctx.where}: '{name}'"
    if kind == "reshape":
        dims = [dim(d, ctx.hp, where) if d != -1 else -1 for d in arg]
        if dims.count(-1) == 1:
            known = int(np.prod([d for d in dims if d != -1]))
            dims[dims.index(-1)] = expr.shape and int(np.prod(expr.shape)) // max(known, 1)
        try:
            return [(X.Reshape(expr, dims), f"reshape {list(expr.shape)} -> {dims}")]
        except ValueError as err:
            raise ConvertError(f"{where}: {err}") from None
    if kind == "transpose":
        return [(X.Transpose(expr, arg), f"transpose {list(arg)}")]
    if kind == "scale":
        factor = ctx.hp.get(arg, 1.0)
        if factor is None or float(factor) == 1.0:
            return [(expr, None)]
        return [(X.Scale(expr, factor), f"x {float(factor):g} ({arg})")]
    if kind == "reinterleave":
        axis = arg % len(expr.shape)
        try:
            order = transforms.permute_rows(1, expr.shape[axis])
        except ValueError as err:
            raise ConvertError(f"{where}: {err}") from None
        return [(X.Take(expr, axis, order), f"rope rows re-interleaved on axis {axis}")]
    if kind == "permute":
        which = arg[k] if isinstance(arg, list) else arg
        if not which or not ctx.permute:
            return [(expr, None)]
        if which == "qkv":
            hp = ctx.hp
            if expr.shape[0] != hp["q_width"] + 2 * hp["kv_width"]:
                raise ConvertError(f"{where}: {expr.shape[0]} rows, but a fused [Q; K; V] of num_heads "
                                   f"{hp['num_heads']}, num_kv_heads {hp['num_kv_heads']} and head_dim {hp['head_dim']} "
                                   f"has {hp['q_width'] + 2 * hp['kv_width']}")
            rows = transforms.permute_fused_qkv_rows(hp["num_heads"], hp["num_kv_heads"], hp["head_dim"])
            return [(X.Take(expr, 0, rows), f"rope permutation of Q ({hp['num_heads']} heads) and K "
                                            f"({hp['num_kv_heads']} heads)")]
        heads = int(ctx.hp["num_heads"] if which == "q" else ctx.hp["num_kv_heads"])
        try:
            rows = transforms.permute_rows(heads, expr.shape[0])
        except ValueError as err:
            raise ConvertError(f"{where}: {err}") from None
        return [(X.Take(expr, 0, rows), f"rope permutation ({heads} heads)")]
    if kind == "regroup":
        parts, layout = _fused_rows(arg, expr, ctx, name)
        rows = np.concatenate(parts)
        if np.array_equal(rows, np.arange(len(rows))):
            return [(expr, None)]
        return [(X.Take(expr, 0, rows), f"regroup {layout} {'QKV' if arg == 'qkv' else 'gate/up'}")]
    if kind == "split":
        if isinstance(arg, str):
            return _named_split(arg, expr, ctx, name, where)
        axis = arg["axis"] % len(expr.shape)
        total = expr.shape[axis]
        if "parts" in arg:
            if total % arg["parts"]:
                raise ConvertError(f"{where}: axis {axis} ({total}) does not split into {arg['parts']} equal parts")
            sizes = [total // arg["parts"]] * arg["parts"]
        else:
            sizes = [dim(s, ctx.hp, where) if s != -1 else -1 for s in arg["sizes"]]
            if sizes.count(-1) == 1:        # -1: whatever the other parts leave
                sizes[sizes.index(-1)] = total - sum(n for n in sizes if n != -1)
            if sum(sizes) != total or min(sizes) < 0:
                raise ConvertError(f"{where}: axis {axis} has {total} entries, not {' + '.join(map(str, sizes))}")
        out, start = [], 0
        for j, size in enumerate(sizes):
            out.append((X.Slice(expr, axis, start, start + size), f"part {j + 1}/{len(sizes)} of axis {axis}"))
            start += size
        return out
    raise AssertionError(kind)


def _named_split(kind, expr, ctx, name, where):
    """MindFormers' fused QKV / gate-up tensors: rows picked per the fused layout (transforms.py)."""
    parts, layout = _fused_rows(kind, expr, ctx, name)
    return [(X.Take(expr, 0, rows), f"split {layout} {'QKV' if kind == 'qkv' else 'gate/up'}: {label}")
            for rows, label in zip(parts, NAMED_SPLITS[kind])]


def _fused_rows(kind, expr, ctx, name):
    """([row indices of each part], layout) of a fused QKV / gate-up tensor."""
    hp, layout = ctx.hp, ctx.layouts.get(kind, "interleaved")
    n_rows = expr.shape[0]
    if kind == "qkv":
        expected = hp["q_width"] + 2 * hp["kv_width"]
        if n_rows != expected:
            raise ConvertError(f"{ctx.where}: fused '{name}' has {n_rows} rows; num_heads {hp['num_heads']}, "
                               f"num_kv_heads {hp['num_kv_heads']} and head_dim {hp['head_dim']} need {expected}")
        tp = rank_blocks(ctx.train_tp, (hp["num_heads"], hp["num_kv_heads"]), layout)
        parts = transforms.split_qkv_rows(hp["num_heads"], hp["num_kv_heads"], hp["head_dim"], layout, tp)
    else:
        if n_rows % 2:
            raise ConvertError(f"{ctx.where}: fused gate/up '{name}' has an odd number of rows ({n_rows})")
        tp = rank_blocks(ctx.train_tp, (n_rows // 2,), layout)
        parts = transforms.split_gate_up_rows(n_rows // 2, layout, tp)
    return parts, layout


def rank_blocks(tp, sizes, layout):
    """How many rank blocks a fused tensor of this layout has: the training TP degree for contiguous
    layouts, 1 for interleaved ones (they are the same for any tensor-parallel degree)."""
    if layout != "contiguous":
        return 1
    if tp < 1 or any(s % tp for s in sizes):
        raise ConvertError(f"--train-tp {tp} does not divide {', '.join(map(str, sizes))}")
    return tp
