"""LoRA fine-tunes: merged into the base weights, exported as a llama.cpp LoRA adapter, or skipped on request.

A LoRA pair is two tensors beside (or instead of) a base weight ``<prefix>.weight`` ``[out, in]``: A ``[r, in]`` and
B ``[out, r]``, in one of MindFormers 2.1.0's namings (its ``tools/transform_safetensors_lora.py``):

    <prefix>.mindpet_delta_lora_a / _b     legacy models, mindpet's LoRADense (pet_config: {pet_type: lora})
    <prefix>.lora_A.weight / .lora_B.weight    mcore (parallel_core ColumnParallelLinearWithLoRA, ...)
    <prefix>.lora_a / .lora_b              pynative
    <prefix>.tk_delta_lora_a / _b          older mindpet

The network computes ``x W^T + scale (x A^T) B^T`` with ``scale = lora_alpha / lora_rank`` (mindpet
``LoRADense.scaling``, ``ColumnParallelLinearWithLoRA.scaling``), i.e. the weight ``W + scale B @ A``.

* merge: every base tensor with a pair is read as ``W + scale B @ A`` (float32, band by band: a box of the
  result reads the same rows of W and B and the same columns of A) before the map's transforms, so the fused
  splits and rope permutations act on the merged weight.
* adapter: a GGUF with ``<gguf tensor>.lora_a`` / ``.lora_b`` (llama.cpp's llama-adapter.cpp). The map's steps
  act on a weight's rows (fused splits, rope permutations, scales); applied to B they give B' with
  ``T(W + s B A) = T(W) + s B' A``, so each GGUF target gets B's steps and the same A, as llama.cpp's
  convert_lora_to_gguf.py does. Steps that touch the columns cannot be expressed this way and are refused.
* skip: the base weights only, said in a warning.

Alpha and rank come from the config's ``pet_config`` (lora_alpha, lora_rank), else an ``adapter_config.json``
(PEFT: lora_alpha, r; MindFormers' PetModel writes one) or ``mindformers_adapter_config.json`` beside the LoRA
checkpoint, else --lora-alpha / --lora-rank. No alpha is an error (never assumed); a rank the tensor shapes
contradict is an error.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from msckpt.box import normalize
from msckpt.classify import group_of
from msckpt.dtypes import DTYPES

from . import steps as steps_mod
from . import tensor_expr as X
from .errors import ConvertError
from .plan import rule_context

# (A suffix, B suffix, naming), most specific first
NAMINGS = [
    (".lora_A.weight", ".lora_B.weight", "mcore"),
    (".mindpet_delta_lora_a", ".mindpet_delta_lora_b", "mindpet"),
    (".tk_delta_lora_a", ".tk_delta_lora_b", "mindpet (tk_delta)"),
    (".lora_a", ".lora_b", "pynative"),
]
ADAPTER_FILES = ("mindformers_adapter_config.json", "adapter_config.json")
MODES = ("merge", "adapter", "skip")
# steps that act on rows only (axis 0), so that they commute with "+ B @ A" when applied to B
_ROW_STEPS = ("permute", "regroup", "scale")


@dataclass
class Pair:
    base: str           # the base weight's name, <prefix>.weight
    a: object           # checkpoint tensor [r, in]
    b: object           # checkpoint tensor [out, r]
    naming: str

    @property
    def rank(self):
        return int(self.a.shape[0])

    @property
    def shape(self):
        return (int(self.b.shape[0]), int(self.a.shape[1]))


def lora_suffix(name):
    """(prefix, "A" | "B", naming) when ``name`` is a LoRA tensor, else None."""
    for a, b, naming in NAMINGS:
        for suffix, which in ((a, "A"), (b, "B")):
            if name.endswith(suffix):
                return name[:-len(suffix)], which, naming
    return None


def find_pairs(ckpt):
    """[Pair] of the checkpoint's LoRA tensors (model weights only: optimizer moments of LoRA tensors are optimizer
    state), each checked: both halves present, 2-D, ranks equal."""
    halves = {}
    for tensor in ckpt:
        if tensor.kind != "tensor" or group_of(tensor) != "weights":
            continue
        found = lora_suffix(tensor.name)
        if found:
            prefix, which, naming = found
            halves.setdefault((prefix, naming), {})[which] = tensor
    pairs = []
    for (prefix, naming), both in halves.items():
        for which, other in (("A", "B"), ("B", "A")):
            if other not in both:
                raise ConvertError(f"{ckpt.path}: LoRA tensor '{both[which].name}' has no {other} half "
                                   f"(expected '{_name(prefix, naming, other)}')")
        a, b = both["A"], both["B"]
        if len(a.shape) != 2 or len(b.shape) != 2:
            raise ConvertError(f"{ckpt.path}: LoRA tensors '{a.name}' {list(a.shape)} / '{b.name}' {list(b.shape)} "
                               "are not 2-D; LoRA on 3-D (expert) tensors is not supported yet")
        if a.shape[0] != b.shape[1]:
            raise ConvertError(f"{ckpt.path}: LoRA '{a.name}' {list(a.shape)} and '{b.name}' {list(b.shape)} "
                               "disagree on the rank (A is [r, in], B is [out, r])")
        pairs.append(Pair(prefix + ".weight", a, b, naming))
    return pairs


def _name(prefix, naming, which):
    a, b, _ = next(n for n in NAMINGS if n[2] == naming)
    return prefix + (a if which == "A" else b)


def lora_names(pairs):
    return {t.name for p in pairs for t in (p.a, p.b)}


# ---------------------------------------------------------------------------------------------------------------
# alpha and rank


def scaling(pairs, config, config_path, lora_dir, alpha_arg=None, rank_arg=None):
    """(alpha, rank, where): the LoRA's alpha and rank and where they were read; errors when alpha is nowhere or
    a rank contradicts the tensors."""
    ranks = sorted({p.rank for p in pairs})
    if len(ranks) > 1:
        by_rank = {p.rank: p.a.name for p in pairs}
        raise ConvertError(f"LoRA tensors of different ranks ({', '.join(f'{r} in {by_rank[r]}' for r in ranks)}); "
                           "one alpha / rank cannot describe them")
    alpha = rank = None
    where = []
    pet = config.get("pet_config") if isinstance(config, dict) else None
    if isinstance(pet, dict) and pet.get("pet_type", "lora") == "lora":
        if pet.get("lora_alpha") is not None:
            alpha, where = float(pet["lora_alpha"]), [f"{config_path}: pet_config.lora_alpha"]
        if pet.get("lora_rank") is not None:
            rank = int(pet["lora_rank"])
            rank_where = f"{config_path}: pet_config.lora_rank"
    if alpha is None:
        for name in ADAPTER_FILES:
            path = Path(lora_dir) / name
            if path.is_file():
                found = _adapter_file(path)
                if found[0] is not None:
                    alpha, where = found[0], [f"{path}: lora_alpha"]
                    if rank is None and found[1] is not None:
                        rank, rank_where = found[1], f"{path}: r"
                    break
    if alpha is None and alpha_arg is not None:
        alpha, where = float(alpha_arg), ["--lora-alpha"]
    elif alpha is not None and alpha_arg is not None and float(alpha_arg) != alpha:
        raise ConvertError(f"--lora-alpha {alpha_arg:g} contradicts {where[0]} = {alpha:g}")
    if rank is None and rank_arg is not None:
        rank, rank_where = int(rank_arg), "--lora-rank"
    elif rank is not None and rank_arg is not None and int(rank_arg) != rank:
        raise ConvertError(f"--lora-rank {rank_arg} contradicts {rank_where} = {rank}")
    if alpha is None:
        raise ConvertError(f"{pairs[0].a.name} and {len(pairs) * 2 - 1} more LoRA tensors, but no lora_alpha: not in "
                           f"the config's pet_config ({config_path}), no {' / '.join(ADAPTER_FILES)} in {lora_dir}; "
                           "pass --lora-alpha (the merge scale is alpha / rank, and no default is safe), or --lora "
                           "skip for the base model")
    if rank is not None and rank != ranks[0]:
        raise ConvertError(f"{rank_where} says the LoRA rank is {rank}, but '{pairs[0].a.name}' "
                           f"{list(pairs[0].a.shape)} has rank {ranks[0]}")
    if rank is None:
        rank_where = f"the shape of '{pairs[0].a.name}'"
    return alpha, ranks[0], where[0] + f", rank {ranks[0]} from {rank_where}"


def _adapter_file(path):
    """(alpha, rank) of a PEFT adapter_config.json or MindFormers' mindformers_adapter_config.json."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConvertError(f"{path}: cannot read ({err})") from None
    if not isinstance(data, dict):
        raise ConvertError(f"{path}: expected a JSON object")
    for section in (data, data.get("lora_config")):
        if not isinstance(section, dict) or section.get("lora_alpha") is None:
            continue
        if section.get("use_rslora") or section.get("alpha_pattern") or section.get("rank_pattern"):
            raise ConvertError(f"{path}: rsLoRA / per-module alpha or rank patterns are not supported")
        rank = section.get("r", section.get("lora_rank"))
        return float(section["lora_alpha"]), (int(rank) if rank is not None else None)
    return None, None


# ---------------------------------------------------------------------------------------------------------------
# checkpoint views


class MergedTensor:
    """``W + scale * B @ A`` read box by box in float32, with the reader's Tensor interface."""

    kind = "tensor"

    def __init__(self, base, pair, scale):
        if tuple(base.shape) != pair.shape:
            raise ConvertError(f"LoRA '{pair.b.name}' {list(pair.b.shape)} @ '{pair.a.name}' {list(pair.a.shape)} "
                               f"gives {list(pair.shape)}, but '{base.name}' is {list(base.shape)}")
        self.name, self.shape, self.dtype = base.name, tuple(base.shape), DTYPES["Float32"]
        self.base, self.pair, self.scale = base, pair, np.float32(scale)

    def read_box(self, box):
        box = normalize(box, self.shape)
        (r0, r1), (c0, c1) = box
        w = X.to_float32(self.base.read_box(box), self.base.dtype.name).astype(np.float32, copy=True)
        rank = self.pair.rank
        b = X.to_float32(self.pair.b.read_box(((r0, r1), (0, rank))), self.pair.b.dtype.name)
        a = X.to_float32(self.pair.a.read_box(((0, rank), (c0, c1))), self.pair.a.dtype.name)
        w += self.scale * (b.astype(np.float32) @ a.astype(np.float32))
        return w

    def array(self):
        return self.read_box(None)

    def rows(self, start, stop):
        return self.read_box(((start, stop), None))

    def byte_ranges(self):
        return None

    @property
    def n_elements(self):
        return int(np.prod(self.shape))


class View:
    """A checkpoint seen through LoRA: the LoRA tensors left out, some tensors replaced (merged), and optionally
    the tensors of a second checkpoint (the base of a LoRA-only save) in front."""

    def __init__(self, ckpt, drop=(), replace=None, base=None):
        self._ckpt, self._base = ckpt, base
        self._drop, self._replace = set(drop), dict(replace or {})
        self.path = ckpt.path

    def _all(self):
        if self._base is not None:
            yield from self._base
        yield from self._ckpt

    def __iter__(self):
        for tensor in self._all():
            if tensor.name not in self._drop:
                yield self._replace.get(tensor.name, tensor)

    def __len__(self):
        return sum(1 for _ in self)

    def __contains__(self, name):
        return name not in self._drop and (name in self._ckpt or (self._base is not None and name in self._base))

    def __getitem__(self, name):
        if name in self._drop:
            raise KeyError(name)
        if name in self._replace:
            return self._replace[name]
        if self._base is not None and name in self._base:
            return self._base[name]
        return self._ckpt[name]

    def get(self, name, default=None):
        return self[name] if name in self else default

    def __getattr__(self, attr):          # train_tp_hint, ... of the checkpoint holding the weights
        return getattr(self._base if self._base is not None else self._ckpt, attr)


def merged_view(ckpt, pairs, scale, base=None):
    """The checkpoint with every LoRA pair merged into its base weight (from ``base`` for a LoRA-only save)."""
    holder = base if base is not None else ckpt
    if base is not None:
        clash = [t.name for t in ckpt if t.name in base and t.name not in lora_names(pairs)
                 and group_of(t) == "weights"]
        if clash:
            raise ConvertError(f"{ckpt.path}: '{clash[0]}' is in both the LoRA checkpoint and --base {base.path}")
    replace = {}
    for pair in pairs:
        if pair.base not in holder:
            hint = " (a LoRA-only checkpoint: give its base with --base BASE_CKPT, or export --lora adapter)" \
                if base is None else f" in --base {base.path}"
            raise ConvertError(f"{ckpt.path}: LoRA '{pair.a.name}' has no base weight '{pair.base}'{hint}")
        replace[pair.base] = MergedTensor(holder[pair.base], pair, scale)
    return View(ckpt, drop=lora_names(pairs), replace=replace, base=base)


class ShapeOnly:
    """A stand-in for a base weight a LoRA-only checkpoint lacks: its name and shape, for planning the adapter."""

    kind = "tensor"

    def __init__(self, name, shape):
        self.name, self.shape, self.dtype = name, tuple(shape), DTYPES["Float32"]

    def byte_ranges(self):
        return None


# ---------------------------------------------------------------------------------------------------------------
# adapter tensors


@dataclass
class AdapterTensor:
    name: str           # <gguf target>.lora_a / .lora_b
    expr: object
    what: str

    @property
    def shape(self):
        return tuple(self.expr.shape)


def _row_steps_only(steps, where):
    """The map rule's steps act on rows only (else the adapter cannot carry them)."""
    for step in steps:
        kind, arg = next(iter(step.items()))
        if kind == "split" and (isinstance(arg, str) or arg.get("axis") == 0):
            continue
        if kind == "each":
            for sub in arg:
                _row_steps_only(sub, where)
            continue
        if kind not in _ROW_STEPS:
            raise ConvertError(f"{where}: the map turns this weight into GGUF tensors with a '{kind}' step, which a "
                               "LoRA adapter's A / B cannot carry; use --lora merge")


def adapter_tensors(pairs, fmap, ctx, num_layers, ckpt_path):
    """[AdapterTensor] for every pair, in map order layer by layer: B through the map's steps for its base weight,
    A unchanged, for each GGUF target the weight becomes."""
    order = {id(rule): k for k, rule in enumerate(fmap.rules)}
    planned = []
    for pair in pairs:
        where = f"{ckpt_path}: LoRA on '{pair.base}'"
        found = None
        for rule in fmap.rules:
            found = rule.match(pair.base, 2)
            if found is not None and rule.holds(ctx.hp):
                break
            found = None
        if found is None:
            raise ConvertError(f"{where}: the map '{fmap.family}' has no rule for the base weight")
        layer = found[0]
        if rule.stacked or len(rule.sources) > 1:
            raise ConvertError(f"{where}: the map {'stacks' if rule.stacked else 'concatenates'} this weight with "
                               "others into one GGUF tensor, which a LoRA adapter cannot express; use --lora merge")
        if 0 <= num_layers <= layer:
            raise ConvertError(f"{where}: layer {layer}, but the model has {num_layers} layers")
        _row_steps_only(rule.steps, where)
        targets = rule.target_names(layer)
        if targets and targets[0] == "token_embd.weight":
            raise ConvertError(f"{where}: LoRA on the token embedding is not supported in an adapter; use --lora "
                               "merge")
        built = steps_mod.apply(rule.steps, [X.Source(pair.b)], rule_context(ctx, rule), pair.b.name)
        a = X.Source(pair.a)
        for target, (b_expr, what) in zip(targets, built):
            planned.append(((layer, order[id(rule)]), [
                AdapterTensor(target + ".lora_a", a, "A"),
                AdapterTensor(target + ".lora_b", b_expr, "B" + (f": {what}" if what else ""))]))
    planned.sort(key=lambda p: p[0])
    out = [t for _, ts in planned for t in ts]
    seen = set()
    for t in out:
        if t.name in seen:
            raise ConvertError(f"{ckpt_path}: two LoRA pairs map to GGUF tensor '{t.name}'")
        seen.add(t.name)
    return out


def check_against_base(adapter, base_shapes, ckpt_path):
    """Every adapter tensor's base GGUF tensor exists with the shape llama.cpp checks (W [out, in]: A [r, in],
    B [out, r])."""
    for t in adapter:
        target = t.name.rsplit(".", 1)[0]
        if target not in base_shapes:
            raise ConvertError(f"{ckpt_path}: adapter tensor {t.name}: the base model has no {target}")
        out, inp = base_shapes[target]
        want = 1 if t.name.endswith(".lora_a") else 0
        if t.shape[want] != (inp if want else out):
            raise ConvertError(f"{ckpt_path}: adapter tensor {t.name} {list(t.shape)} does not fit {target} "
                               f"{[out, inp]}")


def shape_stand_ins(pairs, holder=None):
    """Base weights for planning an adapter: the real ones when present, else shape-only stand-ins."""
    return [holder[p.base] if holder is not None and p.base in holder else ShapeOnly(p.base, p.shape)
            for p in pairs]
