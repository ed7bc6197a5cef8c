"""``--lora adapter``: the plan and metadata of a llama.cpp LoRA adapter GGUF (gguf_out/lora.py has the pairs and
how B goes through the map's steps; gguf_out/conversion.py writes the file).

The adapter is planned against the base model the map would make: from the checkpoint's own base weights (a whole
save, or ``--base``), which are planned and checked as for a conversion, or, for a save of the trainable
parameters only, from shape-only stand-ins of the base weights and the config's hyperparameters.
"""

from gguf import GGMLQuantizationType, Keys

from . import detect, lora, plan as planning, quant_policy
from .writer import KV

OUTTYPES = {"f32": GGMLQuantizationType.F32, "f16": GGMLQuantizationType.F16, "bf16": GGMLQuantizationType.BF16,
            "q8_0": GGMLQuantizationType.Q8_0}


class StandIns:
    """A LoRA-only checkpoint seen as the base weights its pairs imply (names and shapes only)."""

    def __init__(self, path, pairs):
        self.path, self._tensors = path, lora.shape_stand_ins(pairs)

    def __iter__(self):
        return iter(self._tensors)


def build(ckpt, base, pairs, fmap, config, config_path, options, alpha, where, tokenizer=None):
    """(plan, fmap, chosen): the adapter's plan (outputs <gguf tensor>.lora_a / .lora_b with their ggml types),
    the map (``fmap`` None: chosen from the base weights' names and ``tokenizer``'s kind, ``chosen`` True)."""
    holder = base if base is not None else ckpt
    has_base = all(p.base in holder for p in pairs)
    view = lora.View(ckpt, drop=lora.lora_names(pairs), base=base) if has_base else StandIns(ckpt.path, pairs)
    chosen = fmap is None
    if chosen:
        fmap = detect.choose_map(view, config, config_path, tokenizer)
    if has_base:
        base_plan = planning.build(view, fmap, config, config_path, options)
        ctx, num_layers = base_plan.ctx, base_plan.num_layers
    else:
        ctx = planning.adapter_context(list(view), fmap, config, config_path, options, ckpt.path)
        num_layers = int(ctx.hp["num_layers"])
    tensors = lora.adapter_tensors(pairs, fmap, ctx, num_layers, ckpt.path)
    if has_base:
        lora.check_against_base(tensors, {o.name: o.shape for o in base_plan.outputs}, ckpt.path)
    outputs, notes = [], []
    for t in tensors:
        ggml_type = OUTTYPES[options.outtype]
        if ggml_type == GGMLQuantizationType.Q8_0 and t.shape[-1] % 32:
            ggml_type = GGMLQuantizationType.F16
            notes.append(f"{t.name}: rows of {t.shape[-1]} are not a multiple of 32, written as F16")
        outputs.append(planning.Output(t.name, t.expr, t.shape, ggml_type, transform=t.what))
    plan = planning.Plan(outputs, [], ctx.hp, num_layers, notes, fmap.arch,
                         [f"LoRA adapter: {len(pairs)} pairs, alpha {alpha:g} from {where}"], ctx)
    return plan, fmap, chosen


def metadata(fmap, outtype, alpha, name):
    """The adapter's KV pairs, as llama.cpp's llama-adapter.cpp reads them (ecosystem.md §2b)."""
    return [(Keys.General.ARCHITECTURE, KV.str(fmap.arch)), (Keys.General.TYPE, KV.str("adapter")),
            (Keys.General.NAME, KV.str(name)),
            (Keys.General.FILE_TYPE, KV.u32(quant_policy.preset(outtype).file_type)),
            (Keys.Adapter.TYPE, KV.str("lora")), (Keys.Adapter.LORA_ALPHA, KV.f32(alpha))]
