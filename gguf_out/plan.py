"""The conversion plan: every checkpoint entry accounted for, every GGUF tensor with its expression and type.

Planning reads only names and shapes. It decides what each entry becomes (mapped, skipped with a reason,
or an error), cross-checks the config against the shapes, and builds each output tensor as a lazy expression over
its sources (gguf_out/tensor_expr.py, from the map rule's steps, gguf_out/steps.py) with its shape and ggml type,
so the writer can lay out the header before any data and then read each tensor band by band.
"""

import re
from dataclasses import dataclass, field, replace
from math import prod

from msckpt.classify import GROUP_TITLES, group_of

from . import encode, generated, hparams, moe, quant_policy, rope, steps as steps_mod
from . import tensor_expr as X
from .errors import ConvertError
from .maps import SPLITS


@dataclass
class Output:
    name: str
    expr: object              # tensor_expr.Expr over checkpoint (or generated) tensors
    shape: tuple
    ggml_type: int = 0
    note: str | None = None
    transform: str = ""       # what was done, for --verbose / --dry-run

    @property
    def source(self):
        """The (first) checkpoint tensor this output is made from."""
        return self.expr.sources()[0]

    @property
    def dtype_name(self):
        return self.expr.dtype_name

    @property
    def raw_copy(self):
        return self.copies_as(self.ggml_type)

    def copies_as(self, ggml_type):
        """True when the output bytes in this type are exactly byte ranges of the checkpoint file."""
        return (isinstance(self.expr, X.Source) and self.expr.byte_ranges() is not None
                and encode.SAME_BYTES.get(self.expr.dtype_name) == ggml_type)


@dataclass
class Plan:
    outputs: list
    skipped: list             # (name, reason)
    hp: dict
    num_layers: int
    notes: list = field(default_factory=list)     # warnings: what the GGUF cannot carry or was decided by guess
    arch: str = "llama"
    facts: list = field(default_factory=list)     # notes: how something was converted exactly (e.g. folded)
    ctx: object = None                            # the StepContext the map's steps ran with

    def types(self, outtype, has_imatrix=False):
        """[(ggml type, fallback note)] per output for an --outtype preset: llama-quantize's per-tensor mixing
        for the K-quant presets (and for every quantized preset with an importance matrix), one type for every
        weight otherwise (gguf_out/quant_policy.py)."""
        return quant_policy.assign_types([(o.name, o.shape) for o in self.outputs], quant_policy.preset(outtype),
                                         n_head=int(self.hp["num_heads"]), n_head_kv=int(self.hp["num_kv_heads"]),
                                         n_layer=self.num_layers, n_expert=int(self.hp.get("n_expert") or 0),
                                         arch=self.arch, has_imatrix=has_imatrix)


@dataclass
class Options:
    outtype: str = "f16"
    rope_layout: str = "hf"           # "hf": rotate_half (MindFormers >= r0.7), "meta": interleaved (<= r0.6)
    fused_layout: str | None = None    # None: from the config's layout flags, else the map's default (fused_layouts)
    train_tp: int = 1                  # tensor-parallel degree of training (rank-blocked contiguous tensors)
    allow_inexact: bool = False        # settings llama.cpp cannot represent exactly: warnings instead of errors


@dataclass
class Group:
    """The checkpoint tensors one application of a rule reads: one tensor, a layer's experts, or the parts of a
    concatenation."""
    rule: object
    layer: int
    tensors: list

    @property
    def name(self):
        return self.tensors[0].name


def classify_entries(ckpt, fmap):
    """(mapped [(tensor, rule, layer, expert, pattern index)], skipped [(name, reason)]); unmapped entries and
    entries the map rejects are errors."""
    mapped, skipped, unmapped = [], [], []
    for tensor in ckpt:
        why = fmap.rejection(tensor.name)
        if why:
            raise ConvertError(f"{ckpt.path}: '{tensor.name}': {why}; the map '{fmap.family}' ({fmap.path}) "
                               "cannot convert this checkpoint")
        reason = fmap.skip_reason(tensor.name)
        if reason:
            skipped.append((tensor.name, reason))
            continue
        found = _match(fmap, tensor)
        if found is not None:
            mapped.append((tensor,) + found)
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
        rank = ""
        if fmap.rule_for(first.name)[0] is not None:
            rank = f" (the map has a rule for this name, but not for a {len(first.shape)}-D tensor)"
        raise ConvertError(f"{ckpt.path}: unmapped tensor '{first.name}' {list(first.shape)}{rank}{more}; the map "
                           f"'{fmap.family}' ({fmap.path}) has no rule for it — wrong map, or a family this map "
                           "does not cover")
    return mapped, skipped


def _match(fmap, tensor):
    for rule in fmap.rules:
        found = rule.match(tensor.name, len(tensor.shape))
        if found is not None:
            return (rule,) + found
    return None


def group_entries(mapped, ckpt_path):
    """Groups in map order, layer by layer: the GGUF does not depend on the order of the checkpoint's files."""
    by_key = {}
    for tensor, rule, layer, expert, index in mapped:
        by_key.setdefault((id(rule), layer), (rule, layer, {}))[2][(expert, index)] = tensor
    groups = []
    for rule, layer, members in by_key.values():
        if rule.stacked:
            experts = sorted(e for e, _ in members)
            if experts != list(range(len(experts))):
                missing = sorted(set(range(max(experts) + 1)) - set(experts))
                raise ConvertError(f"{ckpt_path}: '{rule.source}' (layer {layer}) has experts "
                                   f"{_ranges(experts)}: expert {missing[0]} is missing")
            tensors = [members[(e, 0)] for e in experts]
        else:
            tensors = [members.get((-1, k)) for k in range(len(rule.sources))]
            if any(t is None for t in tensors):
                absent = rule.sources[tensors.index(None)].replace("{i}", str(layer))
                present = next(t for t in tensors if t is not None)
                raise ConvertError(f"{ckpt_path}: '{present.name}' is concatenated with '{absent}', which the "
                                   "checkpoint lacks")
        groups.append(Group(rule, layer, tensors))
    return groups


def _ranges(values):
    return f"{values[0]}..{values[-1]}" if values else "none"


def _rule_that_holds(fmap, group, hp, ckpt_path):
    """The group's rule, or the next rule for the same tensors whose condition (``if`` / ``unless``) holds."""
    if group.rule.holds(hp):
        return group.rule
    tensor = group.tensors[0]
    for rule in fmap.rules:
        if rule is not group.rule and rule.holds(hp) and rule.match(tensor.name, len(tensor.shape)) is not None:
            return rule
    name, wanted = group.rule.condition
    raise ConvertError(f"{ckpt_path}: '{tensor.name}' needs {name} to be {'set' if wanted else 'unset'} (it is "
                       f"{hp.get(name)!r}), and no other rule of the map '{fmap.family}' fits")


def _source_exprs(group):
    """The expressions a rule's steps start from: the layer's experts stacked, or one per source pattern."""
    sources = [X.Source(t) for t in group.tensors]
    return [X.Stack(sources)] if group.rule.stacked else sources


_PRODUCT = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*|\d+)(\s*\*\s*([A-Za-z_][A-Za-z0-9_]*|\d+))*\s*$")


def _observe(groups, fmap, ckpt_path, known):
    """Hyperparameters as the tensor shapes tell them: {name: (value, 'which tensor')}.

    Each dimension of a rule's source ``shape`` (or, for plain renames, of its target's ``shapes`` entry) is a
    number, a hyperparameter or a product of them ("n_expert*hidden_size"); a product gives its one unknown
    factor once the others are known (from other tensors, else from the config ``known``)."""
    observed, pending = {}, []
    layers = {g.layer for g in groups if g.layer >= 0}
    if layers and not fmap.extra_layers:     # with extra (e.g. MTP) layers, only the config can tell
        observed["num_layers"] = (max(layers) + 1, f"layer indices (0..{max(layers)})")
    for group in groups:
        rule, tensor = group.rule, group.tensors[0]
        spec = rule.shape
        if spec is None and not rule.steps and not rule.stacked and len(rule.sources) == 1:
            spec = fmap.shapes.get(rule.targets[0])
        if not spec or len(spec) != len(tensor.shape):
            continue
        what = f"'{tensor.name}' {list(tensor.shape)}"
        for symbol, value in zip(spec, tensor.shape):
            if isinstance(symbol, str):
                if not _PRODUCT.match(symbol):
                    raise ConvertError(f"{fmap.path}: bad dimension '{symbol}' in the shape of '{rule.source}'")
                pending.append((symbol, int(value), what))
    progress = True
    while pending and progress:
        progress, rest = False, []
        for symbol, value, what in pending:
            factors = [f.strip() for f in symbol.split("*")]
            number = prod(int(f) for f in factors if f.isdigit())
            names = [f for f in factors if not f.isdigit()]
            unknown = [n for n in names if n not in observed]
            if len(unknown) > 1:
                rest.append((symbol, value, what))
                continue
            if unknown and len(names) > 1 and not all(n in observed or n in known for n in names if n != unknown[0]):
                rest.append((symbol, value, what))
                continue
            others = number * prod(int(observed[n][0] if n in observed else known[n]) for n in names
                                   if n not in unknown)
            if unknown:
                name = unknown[0]
                if others == 0 or value % others:
                    raise ConvertError(f"{ckpt_path}: {what}: {value} is not a multiple of {others} "
                                       f"(the dimension {symbol})")
                observed[name] = (value // others, what)
            elif others != value:
                detail = ", ".join(f"{n} = {observed[n][0]} from {observed[n][1]}" if n in observed else
                                   f"{n} = {known[n]}" for n in names)
                raise ConvertError(f"{ckpt_path}: inconsistent shapes: {what} should have {symbol} = {others} "
                                   f"({detail}) but has {value}")
            progress = True
        pending = rest
    return observed


def build(ckpt, fmap, config, config_path, options):
    mapped, skipped = classify_entries(ckpt, fmap)
    if not mapped:
        raise ConvertError(f"{ckpt.path}: no model weights matched the map '{fmap.family}'")
    for tensor in (m[0] for m in mapped):
        encode.check_float(tensor)
    groups = group_entries(mapped, ckpt.path)
    hp = hparams.resolve(fmap, config, config_path)
    for name, regex in fmap.tensor_flags.items():     # save kinds told by names (e.g. legacy inference format)
        hp.put(name, any(regex.search(t.name) for t, *_ in mapped), f"the checkpoint's names ({regex.pattern})")
    for group in groups:            # before the shapes are read: a rule's shape depends on the rule chosen
        group.rule = _rule_that_holds(fmap, group, hp, ckpt.path)
    hparams.complete(hp, _observe(groups, fmap, ckpt.path, hp), config_path)
    _check_constraints(fmap, hp, ckpt.path)
    num_layers = int(hp["num_layers"])
    notes = _config_notes(config, config_path) + hparams.ignored_settings(fmap, config, config_path)
    routing_notes, facts = moe.check_routing(fmap, hp, config_path, options.allow_inexact)
    notes += routing_notes
    layouts, layout_note = fused_layouts(fmap, config, options, ckpt)
    facts += [f"{ckpt.path}: {layout_note}"] if layout_note else []

    scaling = rope.rope_scaling(config, config_path, fmap.rope_scaling.get("defaults"))
    notes += rope.apply(fmap, hp, scaling, config_path, options.allow_inexact)
    for name, expression in fmap.derived.items():
        hp.put(name, steps_mod.dim(expression, hp, f"{fmap.path}: derived {name}"), expression)
    outputs = [Output(t.name, X.Source(t), tuple(t.shape), transform=f"generated: {t.what}")
               for t in generated.tensors(fmap, hp, scaling)]
    ctx = steps_mod.StepContext(hp, layouts, options.train_tp,
                                fmap.permutes_rope(config) and options.rope_layout == "hf", str(ckpt.path))
    order = {id(rule): k for k, rule in enumerate(fmap.rules)}
    for group in sorted(groups, key=lambda g: (g.layer, order[id(g.rule)])):
        if group.layer >= num_layers:
            if fmap.extra_layers:
                skipped += [(t.name, f"layer {group.layer} >= {num_layers}: {fmap.extra_layers}") for t in group.tensors]
                continue
            raise ConvertError(f"{ckpt.path}: '{group.name}' is layer {group.layer}, but the model has {num_layers} "
                               "layers")
        built = steps_mod.apply(group.rule.steps, _source_exprs(group), rule_context(ctx, group.rule), group.name)
        for name, (expr, what) in zip(group.rule.target_names(group.layer), built):
            if group.rule.stacked:
                what = f"{len(group.tensors)} experts stacked" + (", " + what if what else "")
            outputs.append(Output(name, expr, tuple(expr.shape), transform=what))

    _check_outputs(outputs, fmap, hp, num_layers, ckpt.path)
    _check_layer_kinds(outputs, fmap, hp, num_layers, ckpt.path)
    _check_untied_output(outputs, fmap, hp, ckpt.path)
    plan = Plan(outputs, skipped, hp, num_layers, notes, fmap.arch, facts, ctx)
    for out, (ggml_type, note) in zip(outputs, plan.types(options.outtype)):
        out.ggml_type, out.note = ggml_type, note
    plan.notes += [f"{out.name}: {out.note}" for out in outputs if out.note]
    return plan


def rule_context(ctx, rule):
    """The step context of one rule: a rule whose fused tensor follows a named layout entry of the map gets it."""
    if rule.layout:
        return replace(ctx, layouts={**ctx.layouts, rule.fused: ctx.layouts[rule.layout]})
    return ctx


def adapter_context(tensors, fmap, config, config_path, options, ckpt_path):
    """The StepContext for a LoRA adapter of a checkpoint without base weights (a save of the trainable
    parameters only): hyperparameters from the config, cross-checked against the shapes the LoRA pairs give their
    base weights (``tensors``: stand-ins with those names and shapes)."""
    groups = []
    for tensor in tensors:
        found = _match(fmap, tensor)
        if found is None:
            raise ConvertError(f"{ckpt_path}: LoRA on '{tensor.name}' {list(tensor.shape)}: the map '{fmap.family}' "
                               f"({fmap.path}) has no rule for this weight")
        rule, layer = found[0], found[1]
        if rule.stacked or len(rule.sources) > 1:
            raise ConvertError(f"{ckpt_path}: LoRA on '{tensor.name}': the map joins this weight with others into one "
                               "GGUF tensor, which a LoRA adapter cannot express; use --lora merge")
        groups.append(Group(rule, layer, [tensor]))
    hp = hparams.resolve(fmap, config, config_path)
    observed = _observe(groups, fmap, ckpt_path, hp)
    observed.pop("num_layers", None)        # a LoRA may leave layers out
    hparams.complete(hp, observed, config_path)
    _check_constraints(fmap, hp, ckpt_path)
    layouts, _ = fused_layouts(fmap, config, options)
    for name, expression in fmap.derived.items():
        hp.put(name, steps_mod.dim(expression, hp, f"{fmap.path}: derived {name}"), expression)
    return steps_mod.StepContext(hp, layouts, options.train_tp,
                                 fmap.permutes_rope(config) and options.rope_layout == "hf", str(ckpt_path))


def fused_layouts(fmap, config, options, ckpt=None):
    """(layouts, note): the row layout of each kind of fused tensor ("qkv", "gate_up", and the map's named layouts
    such as "mcore_qkv"): --fused-layout if given,
    else contiguous for a save of MindFormers' inference network (it keeps [Q; K; V] and [gate; up] whatever the
    yaml says; the map says how to recognise one), else the first of the map's config flags the config sets (e.g.
    use_contiguous_weight_layout_attention), else the map's default. The note says when the save kind decided."""
    inference = _inference_save(fmap, ckpt)
    layouts, note = {}, None
    for kind in [*SPLITS, *(k for k in fmap.fused_layout if k not in SPLITS)]:
        spec = fmap.fused_layout.get(kind, {})
        layout = options.fused_layout
        if layout is None and inference:
            layout = "contiguous"
        for flag, (if_true, if_false) in spec.get("flags", {}).items():
            if layout is None and isinstance(config.get(flag), bool):
                layout = if_true if config[flag] else if_false
        layouts[kind] = layout or spec.get("default", "interleaved")
    if inference:
        note = (f"'{inference}' is {len(ckpt[inference].shape)}-D: a save of MindFormers' inference network, whose "
                "fused tensors are contiguous ([Q; K; V], [gate; up]) whatever the yaml's layout flags say")
        if options.fused_layout is not None and options.fused_layout != "contiguous":
            note += f"; --fused-layout {options.fused_layout} overrides that"
    return layouts, note


def _inference_save(fmap, ckpt):
    spec = fmap.inference_save
    if not spec or ckpt is None:
        return None
    regex = re.compile(spec["tensor"])
    return next((t.name for t in ckpt if regex.search(t.name) and len(t.shape) == spec["ndim"]), None)


def _check_constraints(fmap, hp, ckpt_path):
    """The map's "constraints": dimensions llama.cpp's architecture assumes equal (e.g. chatglm: the query width is
    the hidden size), so that a model it cannot load is an error here rather than a GGUF llama.cpp rejects."""
    for left, right, why in fmap.constraints:
        a, b = (steps_mod.dim(d, hp, f"{fmap.path}: constraint") for d in (left, right))
        if a != b:
            raise ConvertError(f"{ckpt_path}: {left} = {a} but {right} = {b}; {why}")


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


def _check_outputs(outputs, fmap, hp, num_layers, ckpt_path):
    seen = {}
    for out in outputs:
        if out.name in seen:
            raise ConvertError(f"{ckpt_path}: both '{seen[out.name]}' and '{out.source.name}' map to GGUF tensor "
                               f"'{out.name}'")
        seen[out.name] = out.source.name
        spec = fmap.shapes.get(_pattern(out.name))
        if spec:
            expected = tuple(steps_mod.dim(s, hp, f"{fmap.path}: shape of {out.name}") for s in spec)
            if out.shape != expected:
                described = " x ".join(f"{s}={expected[k]}" if isinstance(s, str) else str(s)
                                       for k, s in enumerate(spec))
                raise ConvertError(f"{ckpt_path}: '{out.source.name}' gives {out.name} shape {list(out.shape)}, "
                                   f"but the config says {list(expected)} ({described})")
    missing = []
    for pattern in fmap.required:
        for layer in (range(num_layers) if "{i}" in pattern else [None]):
            name = pattern.replace("{i}", str(layer)) if layer is not None else pattern
            if name not in seen:
                missing.append(name)
    if missing:
        why = next((fmap.required_why[p] for p in fmap.required_why if _pattern(missing[0]) == p), None)
        raise ConvertError(f"{ckpt_path}: the checkpoint lacks tensors GGUF '{fmap.arch}' requires: "
                           f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}" + (f" ({why})" if why else ""))


def layer_kinds(names, fmap, num_layers):
    """[kind of each layer, or None], [problems]: a layer has all the tensors of exactly one of the map's layer
    kinds (e.g. "dense" or "moe"), and none of another's."""
    kinds, problems = [], []
    names = set(names)
    for layer in range(num_layers):
        have = {kind: [p.replace("{i}", str(layer)) in names for p in pats] for kind, pats in fmap.layer_kinds.items()}
        complete = [kind for kind, flags in have.items() if all(flags)]
        touched = [kind for kind, flags in have.items() if any(flags)]
        if len(complete) == 1 and touched == complete:
            kinds.append(complete[0])
            continue
        kinds.append(None)
        if not touched:
            problems.append(f"layer {layer} has none of the feed-forward tensors of a "
                            f"{' or '.join(fmap.layer_kinds)} layer")
        else:
            kind = touched[0]
            lacking = [p.replace("{i}", str(layer)) for p, f in zip(fmap.layer_kinds[kind], have[kind]) if not f]
            problems.append(f"layer {layer} mixes the tensors of {' and '.join(touched)} layers" if len(touched) > 1
                            else f"layer {layer} is a {kind} layer without {', '.join(lacking)}")
    return kinds, problems


def _check_layer_kinds(outputs, fmap, hp, num_layers, ckpt_path):
    """Each layer's kind from its tensors (configs that claim otherwise are not trusted: MindFormers ignores some
    of them), and the pattern of kinds the architecture allows."""
    if not fmap.layer_kinds:
        return
    kinds, problems = layer_kinds([o.name for o in outputs], fmap, num_layers)
    if problems:
        raise ConvertError(f"{ckpt_path}: {problems[0]}" + (f" (and {len(problems) - 1} more layers)"
                                                            if len(problems) > 1 else ""))
    if fmap.layer_order == "dense_first":
        dense = 0
        while dense < len(kinds) and kinds[dense] == "dense":
            dense += 1
        if "dense" in kinds[dense:]:
            raise ConvertError(f"{ckpt_path}: layer {kinds.index('dense', dense)} is dense after mixture-of-experts "
                               f"layers; GGUF '{fmap.arch}' allows dense layers only before the first MoE layer")
        said = hp.get("leading_dense_blocks")
        if said is not None and int(said) != dense:
            raise ConvertError(f"{hp.source['leading_dense_blocks']} says {said} leading dense layers, but the "
                               f"checkpoint's first {dense} layers are dense and the rest mixture-of-experts layers")
        hp.put("leading_dense_blocks", dense, "layers with a dense feed-forward before the first MoE layer")
    hp.put("layer_kinds", kinds, "the tensors of each layer")


def _pattern(name):
    parts = name.split(".")
    if len(parts) > 1 and parts[0] == "blk":
        parts[1] = "{i}"
    return ".".join(parts)


def bands(out):
    """Yield the output's values in bands of whole rows (its last axis), as arrays of the expression's dtype:
    2-D ``[rows, row length]`` for tensors of two or more axes, the whole tensor for smaller ones. A band is about
    encode.rows_per_chunk rows and never spans more than it must: memory stays bounded whatever the tensor's size.
    """
    expr = out.expr
    if len(out.shape) < 2:
        yield expr.read_all().reshape(out.shape or (1,))
        return
    lead, width = tuple(out.shape[:-1]), out.shape[-1]
    n_rows = prod(lead)
    step = encode.rows_per_chunk(width)
    for start in range(0, n_rows, step):
        for box in X.flat_to_boxes(lead, start, min(n_rows, start + step)):
            yield expr.read(box + ((0, width),)).reshape(-1, width)
