"""``ms2gguf CKPT MAP OUT``: plan, then stream every tensor into a temporary GGUF, then rename it into place."""

import argparse
import contextlib
import math
import os
import sys
import tempfile
import time
from pathlib import Path

from gguf import GGMLQuantizationType
from tqdm import tqdm

from msckpt import open_checkpoint

from . import adapter, check, detect, hparams, lora, metadata, modelfile, plan as planning, quant_policy, templates
from . import vocab as vocabulary
from .encode import encode_rows
from .errors import ConvertError
from .maps import bundled_names, load_map
from .report import human_bytes
from .writer import GGUFWriter, TensorInfo


def build_parser():
    p = argparse.ArgumentParser(
        prog="ms2gguf",
        usage="ms2gguf CKPT [MAP] OUT [options]",
        description="Convert a MindSpore / MindFormers checkpoint to GGUF for llama.cpp and Ollama.",
        epilog=f"Bundled maps: {', '.join(bundled_names())}. Subcommands: 'ms2gguf inspect CKPT', "
               "'ms2gguf check FILE.gguf'.")
    p.add_argument("ckpt", metavar="CKPT", help="checkpoint: .ckpt (plain, CRC, encrypted) or .safetensors, or a "
                   "directory (MindFormers Checkpoint 2.0 root or iteration_*/, rank_N/ tree, safetensors shards)")
    p.add_argument("map", metavar="MAP", nargs="?", help="family map: a bundled name (e.g. llama2), a path to a "
                   ".json map, or 'auto' (the default when OUT ends in .gguf) to choose by tensor names and config")
    p.add_argument("out", metavar="OUT", help="output .gguf file")
    p.add_argument("--config", metavar="FILE", help="MindFormers yaml or HF config.json "
                   "(default: config.yaml / config.json / the only *.yaml beside CKPT)")
    p.add_argument("--tokenizer", metavar="FILE", help="tokenizer file or its directory: SentencePiece "
                   "tokenizer.model, or for BPE maps tokenizer.json, vocab.json + merges.txt or a tiktoken file "
                   "(default: beside CKPT); a tokenizer_config.json beside it supplies the chat template and "
                   "special tokens")
    p.add_argument("--outtype", default=None, type=_outtypes, metavar="TYPE[,TYPE...]",
                   help="output type: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1 (every 2-D weight), or a "
                   "llama-quantize preset with its per-tensor mixing: q2_k, q3_k_s, q3_k_m, q3_k_l, q4_k_s, "
                   "q4_k_m, q5_k_s, q5_k_m, q6_k. Norms and biases stay F32. Several, comma-separated, write "
                   "several files from one read of the checkpoint; OUT must then contain {ftype} "
                   "(default: f16; f32 for --lora adapter)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, metavar="N",
                   help="cores used for converting and quantizing (default: all, %(default)s)")
    p.add_argument("--rope-layout", choices=("hf", "meta"), default="hf",
                   help="Q/K row layout in the checkpoint: 'hf' rotate_half (MindFormers r0.7 and later, "
                   "permuted for llama.cpp) or 'meta' interleaved (r0.6 and earlier, copied as is) "
                   "(default: %(default)s)")
    p.add_argument("--fused-layout", choices=("interleaved", "contiguous"), default=None,
                   help="layout of fused QKV and gate/up tensors (w_qkv / w_gate_hidden, mcore linear_qkv / "
                   "linear_fc1): 'interleaved' (MindFormers 1.4 and later, mcore 1.7 and later) or 'contiguous' "
                   "(up to 1.3, mcore 1.6) (default: the config's use_contiguous_weight_layout_attention / "
                   "use_interleaved_weight_layout_mlp, else interleaved)")
    p.add_argument("--train-tp", type=int, default=None, metavar="N",
                   help="tensor-parallel degree the model was trained with; contiguous fused tensors are then "
                   "rank-blocked (default: read from a distributed checkpoint's strategy, else 1)")
    p.add_argument("--allow-inexact", action="store_true", help="convert even when the model uses settings the "
                   "GGUF architecture cannot represent exactly (e.g. mixture-of-experts routing without "
                   "renormalisation for qwen3moe); each is reported as a warning instead of an error")
    p.add_argument("--strategy", metavar="FILE_OR_DIR", help="parallel strategy of a distributed CKPT directory "
                   "(rank_N/ shards): a strategy file (.ckpt/.json) or a directory of per-rank files (default: "
                   "CKPT/strategy* or MindFormers' CKPT/../strategy/)")
    p.add_argument("--step", metavar="N", help="which save to read: in a MindFormers Checkpoint 2.0 root, "
                   "iteration_N/ (default: the one latest_checkpointed_iteration.txt names); in a rank_N/ tree, "
                   "step N or EPOCH_N of <prefix>-EPOCH_N files (default: the newest); 'ms2gguf inspect' lists them")
    p.add_argument("--lora", choices=lora.MODES, default=None,
                   help="a checkpoint with LoRA tensors: 'merge' them into the base weights (the default), write "
                   "OUT as a llama.cpp LoRA 'adapter' GGUF (general.type adapter, <tensor>.lora_a / .lora_b), or "
                   "'skip' them and convert the base model only")
    p.add_argument("--lora-alpha", type=float, metavar="ALPHA", help="LoRA alpha when neither the config's "
                   "pet_config nor an adapter_config.json beside CKPT gives it (scale = alpha / rank)")
    p.add_argument("--lora-rank", type=int, metavar="R", help="LoRA rank, checked against the tensors "
                   "(default: the config's pet_config, adapter_config.json, or the tensor shapes)")
    p.add_argument("--base", metavar="BASE_CKPT", help="the base checkpoint of a LoRA-only CKPT (MindFormers "
                   "save_trainable_params): its weights are merged with CKPT's LoRA, both streamed")
    p.add_argument("--name", help="general.name (default: the checkpoint's file name)")
    p.add_argument("--chat-template", metavar="NAME|FILE", help="chat template for tokenizer.chat_template and the "
                   f"Modelfile: a built-in format ({', '.join(templates.FORMATS)}), a Jinja file (or a JSON file with "
                   "a \"chat_template\"), or 'none' (default: tokenizer_config.json's, else the map's default)")
    p.add_argument("--modelfile", action="store_true", help="also write an Ollama Modelfile, OUT with the suffix "
                   ".Modelfile (FROM, TEMPLATE, stop and num_ctx parameters)")
    p.add_argument("--ollama", metavar="NAME", help="after converting, run 'ollama create NAME -f <Modelfile>' "
                   "(implies --modelfile; without ollama on PATH, prints the command)")
    p.add_argument("--system", metavar="TEXT", help="default system prompt (SYSTEM) for the Modelfile "
                   "(implies --modelfile)")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    p.add_argument("--dry-run", action="store_true", help="print the plan (each tensor's name, shape, type) and "
                   "write nothing")
    p.add_argument("--verify-crc", action="store_true", help="check the checkpoint's CRC before converting")
    p.add_argument("--tmp-dir", metavar="DIR", help="where decrypted checkpoints are staged (default: system temp)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    p.add_argument("-v", "--verbose", action="store_true", help="list skipped entries and each tensor's mapping")
    from .cli import add_decryption_options
    add_decryption_options(p)
    return p


def _outtypes(text):
    """--outtype: one or more preset names, canonical (aliases like q4_k resolved), without repeats."""
    names = []
    for part in text.split(","):
        try:
            name = quant_policy.preset(part.strip()).name
        except ValueError:
            raise argparse.ArgumentTypeError(f"unknown type '{part.strip()}' (choose from "
                                             f"{', '.join(quant_policy.PRESETS)})") from None
        if name not in names:
            names.append(name)
    return names


def output_paths(out, outtypes):
    """OUT for each outtype: '{ftype}' in OUT becomes the type in llama.cpp's spelling (Q4_K_M, F16, ...)."""
    if len(outtypes) > 1 and "{ftype}" not in out:
        raise ConvertError(f"{out}: several --outtype values need {{ftype}} in OUT, e.g. model-{{ftype}}.gguf")
    return [Path(out.replace("{ftype}", t.upper())) for t in outtypes]


def main(argv):
    args = build_parser().parse_args(argv)
    if args.map is None:
        if not args.out.endswith(".gguf"):
            raise ConvertError(f"expected CKPT MAP OUT, or CKPT OUT.gguf to choose the map automatically "
                               f"(got CKPT {args.ckpt} and {args.out})")
        args.map = "auto"
    return run(args)


def _tokenizer_path(args, fmap):
    path = Path(args.tokenizer) if args.tokenizer else vocabulary.find_tokenizer(args.ckpt, fmap.tokenizer_kinds)
    if path is None and args.base and not args.tokenizer:
        path = vocabulary.find_tokenizer(args.base, fmap.tokenizer_kinds)
    if path is None:
        wanted = " / ".join(vocabulary.tokenizer_patterns(fmap.tokenizer_kinds))
        raise ConvertError(f"{args.ckpt}: no tokenizer ({wanted}) beside the checkpoint; pass --tokenizer")
    return path


def log(args, text):
    if not args.quiet:
        print(text, file=sys.stderr)


def run(args):
    started = time.monotonic()
    if args.outtype is None:
        args.outtype = ["f32" if args.lora == "adapter" else "f16"]
    if args.lora == "adapter":
        _check_adapter_options(args)
    out_paths = output_paths(args.out, args.outtype)
    if args.threads < 1:
        raise ConvertError(f"--threads {args.threads}: must be at least 1")
    if not args.dry_run:
        for out_path in out_paths:
            if out_path.exists() and not args.force:
                raise ConvertError(f"{out_path}: already exists (use --force to overwrite)")
            if out_path.is_dir():
                raise ConvertError(f"{out_path}: is a directory")
            if not out_path.resolve().parent.is_dir():
                raise ConvertError(f"{out_path}: the directory {out_path.resolve().parent} does not exist")
            modelfile.check_options(args, out_path)
        if args.ollama is not None and len(out_paths) > 1:
            raise ConvertError("--ollama creates one model: give a single --outtype")
    fmap = None if args.map == "auto" else load_map(args.map)
    config_path = Path(args.config) if args.config else hparams.find_config(args.ckpt)
    if config_path is None and args.base:
        config_path = hparams.find_config(args.base)
    if config_path is None:
        raise ConvertError(f"{args.ckpt}: no config.yaml / config.json beside the checkpoint; pass --config")
    config = hparams.read_config(config_path)

    shards = {k: v for k, v in (("strategy", args.strategy), ("step", args.step)) if v is not None}
    with contextlib.ExitStack() as stack:
        ckpt = stack.enter_context(open_checkpoint(args.ckpt, dec_key=args.dec_key, dec_mode=args.dec_mode,
                                                   verify_crc=args.verify_crc, tmp_dir=args.tmp_dir, **shards))
        base = stack.enter_context(open_checkpoint(args.base, dec_key=args.dec_key, dec_mode=args.dec_mode,
                                                   tmp_dir=args.tmp_dir)) if args.base else None
        pairs = lora.find_pairs(ckpt)
        mode = _lora_mode(args, ckpt, pairs)
        if mode == "adapter":
            return _run_adapter(args, ckpt, base, pairs, fmap, config, config_path, out_paths[0], started)
        view, lora_facts, lora_notes, lora_skipped = _lora_view(args, ckpt, base, pairs, mode, config, config_path)
        if fmap is None:
            fmap = detect.choose_map(view, config, config_path, args.tokenizer)
            log(args, f"map: {fmap.family} ({fmap.path}), chosen from the tensor names and {config_path}")
        tokenizer_path = _tokenizer_path(args, fmap)
        options = planning.Options(args.outtype[0], args.rope_layout, args.fused_layout,
                                   _train_tp(args, view, fmap, config), args.allow_inexact)
        plan = planning.build(view, fmap, config, config_path, options)
        plan.facts += lora_facts
        plan.notes += lora_notes
        plan.skipped += lora_skipped
        vocab = vocabulary.load_tokenizer(tokenizer_path, fmap)
        vocabulary.pad_to(vocab, int(plan.hp["vocab_size"]))
        chat = templates.apply(args.chat_template, vocab, fmap.for_tokenizer(vocab.kind))
        name = args.name or Path(args.ckpt).stem
        targets = [_target(outtype, path, plan, fmap, vocab, name) for outtype, path in zip(args.outtype, out_paths)]
        for warning in vocab.warnings + plan.notes + [n for t in targets[1:] for n in t.notes]:
            print(f"ms2gguf: warning: {warning}", file=sys.stderr)
        for fact in plan.facts:
            log(args, f"note: {fact}")
        if args.verbose or args.dry_run:
            _print_plan(plan, targets, sys.stdout if args.dry_run else sys.stderr)
        if args.dry_run:
            return 0
        _write(targets, plan, args, fmap)
    status = 0
    for target in targets:
        _summary(args, plan, target, time.monotonic() - started)
        status = modelfile.after_conversion(args, target.path, plan, vocab, chat, lambda text: log(args, text)) \
            or status
    return status


def _lora_mode(args, ckpt, pairs):
    """merge / adapter / skip, or None for a checkpoint without LoRA tensors."""
    if not pairs:
        if args.lora == "adapter" or args.base:
            raise ConvertError(f"{ckpt.path}: no LoRA tensors (*.mindpet_delta_lora_a/b, *.lora_A/B.weight, "
                               f"*.lora_a/b), so {'--lora adapter' if args.lora == 'adapter' else '--base'} has "
                               "nothing to use")
        if args.lora is not None:
            print(f"ms2gguf: warning: --lora {args.lora}: {ckpt.path} has no LoRA tensors", file=sys.stderr)
        return None
    return args.lora or "merge"


def _lora_view(args, ckpt, base, pairs, mode, config, config_path):
    """(checkpoint view, facts, warnings, skipped entries) for converting the base weights with the LoRA merged,
    left out (skip), or a checkpoint without LoRA as it is."""
    if mode is None:
        return ckpt, [], [], []
    names = sorted(lora.lora_names(pairs))
    if mode == "skip":
        view = lora.View(ckpt, drop=names, base=base)
        return view, [], [f"--lora skip: {len(names)} LoRA tensors of {ckpt.path} left out; this GGUF is the base "
                          "model, not the fine-tune"], [(n, "LoRA (--lora skip)") for n in names]
    alpha, rank, where = lora.scaling(pairs, config, config_path, _lora_dir(args), args.lora_alpha,
                                      args.lora_rank)
    view = lora.merged_view(ckpt, pairs, alpha / rank, base)
    fact = (f"LoRA merged into {len(pairs)} weights: W + {alpha / rank:g} B @ A (alpha {alpha:g} from {where})")
    return view, [fact], [], [(n, f"LoRA, merged into {p.base}") for p in pairs for n in (p.a.name, p.b.name)]


def _lora_dir(args):
    """Where an adapter_config.json of the LoRA checkpoint would be: beside it (inside it, for a directory)."""
    path = Path(args.ckpt).resolve()
    return path if path.is_dir() else path.parent


def _check_adapter_options(args):
    if args.modelfile or args.ollama is not None or args.system is not None:
        raise ConvertError("--lora adapter writes no model for a Modelfile's FROM (and Ollama's ADAPTER import is "
                           "not supported here); use --lora merge for --modelfile / --ollama")
    if len(args.outtype) > 1 or args.outtype[0] not in adapter.OUTTYPES:
        raise ConvertError(f"--lora adapter: --outtype {','.join(args.outtype)}: an adapter is written as one of "
                           f"{', '.join(adapter.OUTTYPES)}")


def _run_adapter(args, ckpt, base, pairs, fmap, config, config_path, out_path, started):
    """OUT as a llama.cpp LoRA adapter GGUF of the base model the map would make (gguf_out/adapter.py)."""
    alpha, rank, where = lora.scaling(pairs, config, config_path, _lora_dir(args), args.lora_alpha,
                                      args.lora_rank)
    options = planning.Options(args.outtype[0], args.rope_layout, args.fused_layout, args.train_tp or 1,
                               args.allow_inexact)
    plan, fmap, chosen = adapter.build(ckpt, base, pairs, fmap, config, config_path, options, alpha, where,
                                       args.tokenizer)
    if chosen:
        log(args, f"map: {fmap.family} ({fmap.path}), chosen from the tensor names and {config_path}")
    kvs = adapter.metadata(fmap, args.outtype[0], alpha, args.name or Path(args.ckpt).stem)
    target = Target(args.outtype[0], out_path, [(o.ggml_type, None) for o in plan.outputs], kvs)
    for note in plan.notes:
        print(f"ms2gguf: warning: {note}", file=sys.stderr)
    for fact in plan.facts:
        log(args, f"note: {fact}")
    if args.verbose or args.dry_run:
        _print_plan(plan, [target], sys.stdout if args.dry_run else sys.stderr)
    if args.dry_run:
        return 0
    _write([target], plan, args, fmap)
    log(args, f"wrote {out_path}: LoRA adapter for {fmap.arch}, {len(plan.outputs)} tensors ({len(pairs)} pairs, "
              f"rank {rank}, alpha {alpha:g}), {human_bytes(target.size)}, {target.outtype}, "
              f"{time.monotonic() - started:.1f} s; load it with llama.cpp's --lora on the base GGUF")
    return 0


class Target:
    """One output file: its --outtype preset, path, per-tensor types and metadata."""

    def __init__(self, outtype, path, types, kvs):
        self.outtype, self.path, self.kvs = outtype, path, kvs
        self.types = [t for t, _ in types]
        self.notes = [note for _, note in types if note]
        self.size = 0


def _target(outtype, path, plan, fmap, vocab, name):
    types = plan.types(outtype)
    notes = [(t, f"{o.name}: {note}" if note else None) for o, (t, note) in zip(plan.outputs, types)]
    return Target(outtype, path, notes, metadata.build(fmap, plan, vocab, quant_policy.preset(outtype), name))


def _train_tp(args, ckpt, fmap, config):
    """--train-tp, else (contiguous fused tensors only: the others are the same for any degree) what a
    distributed checkpoint's strategy shows for its fused tensors, else 1."""
    layouts, _ = planning.fused_layouts(fmap, config, planning.Options(fused_layout=args.fused_layout), ckpt)
    contiguous = "contiguous" in layouts.values()
    if args.train_tp is not None:
        if args.train_tp > 1 and not contiguous:
            raise ConvertError("--train-tp only matters for contiguous fused tensors (--fused-layout contiguous, "
                               "or the config's layout flags); interleaved layouts are the same for any "
                               "tensor-parallel degree")
        return args.train_tp
    hint = getattr(ckpt, "train_tp_hint", None)
    if hint is None or not contiguous:
        return 1
    tp = hint([t.name for t in ckpt if getattr(fmap.rule_for(t.name)[0], "fused", None)]) or 1
    if tp > 1:
        log(args, f"note: --train-tp {tp} from the strategy (fused tensors' rows are split {tp} ways)")
    return tp


def _write(targets, plan, args, fmap):
    """Stream every tensor into one temporary file per target, then check each and rename it into place.

    Each tensor is read (and transformed) once and encoded for every target; after any error no temporary
    file is left and no OUT is touched.
    """
    temps = []
    try:
        for target in targets:
            fd, tmp_name = tempfile.mkstemp(dir=target.path.resolve().parent, prefix=f".{target.path.name}.",
                                            suffix=".tmp")
            temps.append(tmp_name)
            target.file = os.fdopen(fd, "wb")
            target.writer = GGUFWriter(target.file)
            infos = [TensorInfo(o.name, o.shape, t) for o, t in zip(plan.outputs, target.types)]
            target.size = target.writer.write_header(target.kvs, infos)
        total = sum(TensorInfo(o.name, o.shape, t).nbytes for target in targets
                    for o, t in zip(plan.outputs, target.types))
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="writing",
                  disable=args.quiet, file=sys.stderr, leave=False) as bar:
            for i, out in enumerate(plan.outputs):
                _write_tensor([(t.writer, t.types[i]) for t in targets], out, bar, args.threads)
        # no fsync: the rename guarantees that a failed or interrupted run leaves nothing at OUT; durability
        # against power loss is the filesystem's business, and an fsync would cost as much as the copy itself
        for target in targets:
            target.writer.finish()
            target.file.close()
        for target, tmp_name in zip(targets, temps):
            _check_output(tmp_name, target.path, fmap)
        for target, tmp_name in zip(targets, temps):
            os.chmod(tmp_name, 0o644)
            os.replace(tmp_name, target.path)
    except BaseException:
        for target in targets:
            if getattr(target, "file", None) is not None:
                target.file.close()
        for tmp_name in temps:
            try:
                os.unlink(tmp_name)
            except FileNotFoundError:
                pass
        raise


def _check_output(tmp_name, out_path, fmap):
    """The new file must pass 'ms2gguf check' before it takes OUT's name."""
    report = check.check_file(tmp_name, [fmap] if fmap is not None else None)
    for problem in report.warnings:
        if problem.kind != "file-type":     # the summary explains file_type 0
            print(f"ms2gguf: warning: {out_path}: {problem.text}", file=sys.stderr)
    if report.errors:
        more = f" (and {len(report.errors) - 1} more problems)" if len(report.errors) > 1 else ""
        raise ConvertError(f"{out_path}: the converted GGUF fails its check, so it was not written: "
                           f"{report.errors[0].text}{more}")


def _write_tensor(writers, out, bar, threads):
    """One output tensor into each (writer, ggml type): kernel copies where the bytes are the checkpoint's,
    otherwise the tensor is read once, band by band (plan.bands), and each band encoded for each type."""
    encoded = []
    for writer, ggml_type in writers:
        writer.begin_tensor(out.name)
        if out.copies_as(ggml_type):
            tensor = out.source
            for offset, length in tensor.byte_ranges():
                tensor.source.advise_sequential(offset, length)
                writer.copy_range(tensor.source.fileno(), offset, length)
                bar.update(length)
        else:
            encoded.append((writer, ggml_type))
    if encoded:
        for band in planning.bands(out):
            for writer, ggml_type in encoded:
                data = encode_rows(band, out.dtype_name, ggml_type, threads)
                writer.write(memoryview(data).cast("B"))
                bar.update(data.nbytes)
    for writer, _ in writers:
        writer.end_tensor()


def _print_plan(plan, targets, stream):
    for name, reason in plan.skipped:
        print(f"skip   {name}  ({reason})", file=stream)
    width = max((len(o.name) for o in plan.outputs), default=10)
    for i, o in enumerate(plan.outputs):
        types = "/".join(GGMLQuantizationType(t.types[i]).name for t in targets)
        how = "copy" if all(o.copies_as(t.types[i]) for t in targets) else o.transform or "convert"
        names = [t.name for t in o.expr.sources()]
        source = names[0] if len(names) == 1 else f"{names[0]} (+{len(names) - 1} more)"
        print(f"tensor {o.name:<{width}}  {types:<5} {'x'.join(map(str, o.shape)):<14} <- {source} "
              f"[{o.source.dtype.name}] {how}", file=stream)


def _summary(args, plan, target, seconds):
    params = sum(math.prod(o.shape) for o in plan.outputs)
    log(args, f"wrote {target.path}: {len(plan.outputs)} tensors, {params:,} parameters, "
              f"{human_bytes(target.size)}, {target.outtype}, {seconds:.1f} s ({len(plan.skipped)} checkpoint "
              f"entries skipped{'; -v lists them' if plan.skipped and not args.verbose else ''})")
    if target.outtype == "f32":
        log(args, "note: general.file_type is 0 (ALL_F32); Ollama reads that as 'unknown' and will not quantize "
                  "this file at create time (convert with --outtype f16 or a quantized type instead)")
