"""``ms2gguf CKPT MAP OUT``: plan, then stream every tensor into a temporary GGUF, then publish it (publish.py).

An output may be a split set (``--split-max-size`` / ``--split-max-tensors``, gguf_out/split.py); with
``--split-part K`` only split K of each set is written, reading only the tensors it holds. The temporary files and
their publishing are the small functions ``_temp_output``, ``_publish`` and ``_discard`` over publish.py: a set
(with its Modelfile) is published all together or not at all.
"""

import argparse
import contextlib
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from gguf import GGMLQuantizationType

from msckpt import open_checkpoint

from . import adapter, check, detect, hparams, lora, metadata, modelfile, publish, quant_policy, split, templates
from . import weighted
from . import imatrix as imatrix_mod
from . import plan as planning
from . import vocab as vocabulary
from .encode import encode_rows
from .cli import dec_key, machine_cores
from .errors import ConvertError
from .finite import ValueCheck
from .maps import bundled_names, load_map
from .output import escape, progress
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
    p.add_argument("--split-max-size", type=_size, default=0, metavar="SIZE",
                   help="write a split set (OUT-00001-of-0000N.gguf, ...) whose files hold at most SIZE of tensor "
                   "data each (decimal units as gguf-split: 500M, 50G; at least one tensor per file)")
    p.add_argument("--split-max-tensors", type=_positive, default=0, metavar="N",
                   help="write a split set whose files hold at most N tensors each")
    p.add_argument("--split-part", type=_positive, default=None, metavar="K",
                   help="write only split K (1-based, as in the file names) of the split plan: N processes, on "
                   "any machines and in any order, write the same set as one run")
    p.add_argument("--imatrix", metavar="FILE", help="importance matrix from llama.cpp's llama-imatrix (GGUF or "
                   "legacy imatrix.dat), used as llama-quantize --imatrix uses it: by the quantized types (Q8_0 "
                   "ignores it) and in llama-quantize's per-tensor choices for every quantized --outtype")
    p.add_argument("--threads", type=int, default=machine_cores(), metavar="N",
                   help="cores used for converting and quantizing, at most the machine's (default: all, "
                   "%(default)s)")
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
    p.add_argument("--allow-nonfinite", action="store_true", help="keep weights that are NaN or infinite (by "
                   "default an error naming the tensor); the count is reported")
    p.add_argument("--clamp-f16", action="store_true", help="clamp weights beyond ±65504 to ±65504 in F16 outputs "
                   "(by default an error: they would become infinite); the count is reported")
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
    p.add_argument("--force", action="store_true", help="replace OUT (and its Modelfile) if it exists; an input "
                   "is never replaced")
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


def _size(text):
    try:
        return split.parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _positive(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number of at least 1")
    return value


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
    return run(args).status


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
        print(escape(text), file=sys.stderr)


def warn(args, text):
    """A warning (not shown with -q, which prints errors only)."""
    if not args.quiet:
        print(f"ms2gguf: warning: {escape(text)}", file=sys.stderr)


@dataclass
class Result:
    """What a conversion did (the Python API returns it): per outtype the planned files (a split set's every
    file), the files this run wrote, tensors, bytes written, seconds, skipped checkpoint entries."""
    outputs: dict = field(default_factory=dict)         # outtype -> [Path] (the whole set, in split order)
    written: list = field(default_factory=list)         # [Path] written by this run
    modelfiles: list = field(default_factory=list)      # [Path]
    tensors: int = 0
    bytes: int = 0
    seconds: float = 0.0
    skipped: list = field(default_factory=list)         # [(name, reason)]
    status: int = 0                                     # ollama create's exit status, else 0


def run(args):
    started = time.monotonic()
    if args.outtype is None:
        args.outtype = ["f32" if args.lora == "adapter" else "f16"]
    if args.lora == "adapter":
        _check_adapter_options(args)
    out_paths = output_paths(args.out, args.outtype)
    if args.threads < 1:
        raise ConvertError(f"--threads {args.threads}: must be at least 1")
    args.threads = min(args.threads, machine_cores())
    if not os.path.lexists(args.ckpt):
        raise ConvertError(f"{args.ckpt}: checkpoint not found")
    args.dec_key = dec_key(args)
    if args.split_part is not None and args.ollama is not None:
        raise ConvertError("--ollama needs the whole split set: write the parts, then run 'ollama create' with the "
                           "Modelfile part 1 writes (--modelfile)")
    planning_only = getattr(args, "plan_only", False)
    writing = not args.dry_run and not planning_only
    splitting = bool(args.split_max_size or args.split_max_tensors)
    fmap = None if args.map == "auto" else load_map(args.map)
    config_path = Path(args.config) if args.config else hparams.find_config(args.ckpt)
    if config_path is None and args.base:
        config_path = hparams.find_config(args.base)
    if config_path is None:
        raise ConvertError(f"{args.ckpt}: no config.yaml / config.json beside the checkpoint; pass --config")
    if writing:
        _refuse_inputs(args, out_paths + _modelfile_paths(args, out_paths), config_path)   # even with --force
        for out_path in out_paths:
            # a split set's files are checked once the split plan names them
            if publish.destination(out_path).exists() and not args.force and not splitting:
                raise ConvertError(f"{out_path}: already exists (use --force to overwrite)")
            if args.split_part in (None, 1):
                modelfile.check_options(args, out_path)
        if args.ollama is not None and len(out_paths) > 1:
            raise ConvertError("--ollama creates one model: give a single --outtype")
    config = hparams.read_config(config_path)
    imatrix = imatrix_mod.load(args.imatrix) if args.imatrix else None

    result = Result()
    shards = {k: v for k, v in (("strategy", args.strategy), ("step", args.step)) if v is not None}
    with contextlib.ExitStack() as stack:
        ckpt = stack.enter_context(open_checkpoint(args.ckpt, dec_key=args.dec_key, dec_mode=args.dec_mode,
                                                   verify_crc=args.verify_crc, tmp_dir=args.tmp_dir, **shards))
        base = stack.enter_context(open_checkpoint(args.base, dec_key=args.dec_key, dec_mode=args.dec_mode,
                                                   tmp_dir=args.tmp_dir)) if args.base else None
        pairs = lora.find_pairs(ckpt)
        mode = _lora_mode(args, ckpt, pairs)
        if mode == "adapter":
            if args.split_max_size or args.split_max_tensors or args.split_part is not None:
                raise ConvertError("--lora adapter writes one small file: --split-max-size, --split-max-tensors and "
                                   "--split-part do not apply")
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
        targets = [_target(outtype, path, plan, fmap, vocab, name, args, imatrix)
                   for outtype, path in zip(args.outtype, out_paths)]
        result.outputs = {t.outtype: [s.path for s in t.shards] for t in targets}
        result.skipped = list(plan.skipped)
        result.tensors = len(plan.outputs)
        if planning_only:
            return result
        _choose_parts(targets, args)
        if args.split_max_size or args.split_max_tensors:
            for target in targets:
                if len(target.shards) == 1:
                    log(args, f"note: the split plan of {target.path} has one file: it is written as one GGUF, "
                              "without split keys")
        unused = [t.outtype for t in targets if imatrix is not None and t.weights is None]
        if unused:
            log(args, f"note: --imatrix does not apply to {', '.join(unused)} (not quantized)")
        imatrix_warnings = list(dict.fromkeys(w for t in targets for w in t.imatrix_warnings))
        for warning in vocab.warnings + plan.notes + [n for t in targets[1:] for n in t.notes] + imatrix_warnings:
            warn(args, warning)
        for fact in plan.facts:
            log(args, f"note: {fact}")
        if args.verbose or args.dry_run:
            _print_plan(plan, targets, sys.stdout if args.dry_run else sys.stderr)
        if args.dry_run:
            _print_splits(targets, sys.stdout)
            return result
        # the Modelfile comes with the first split, naming every file of the set
        with_modelfile = [t for t in targets if t.parts and t.parts[0].index == 0]
        _refuse_inputs(args, [s.path for t in targets for s in t.parts] +
                       _modelfile_paths(args, [t.path for t in with_modelfile]), config_path, tokenizer_path)
        for target in targets:
            for shard in target.parts:
                if publish.destination(shard.path).exists() and not args.force:
                    raise ConvertError(f"{shard.path}: already exists (use --force to overwrite)")
        extras = [modelfile.planned(args, t.path, [s.path for s in t.shards], _set_size(t, plan), plan, vocab, chat)
                  for t in with_modelfile] if modelfile.wanted(args) else []
        _write(targets, plan, args, fmap, extras)
    for target in targets:
        result.written += [s.path for s in target.parts]
        result.bytes += sum(s.size for s in target.parts)
        if target.parts:
            _summary(args, plan, target, time.monotonic() - started)
    for path, _ in extras:
        result.modelfiles.append(path)
        result.status = modelfile.after_conversion(args, path, chat, lambda text: log(args, text)) or result.status
    result.seconds = time.monotonic() - started
    return result


def _modelfile_paths(args, out_paths):
    """The Modelfiles written beside ``out_paths`` (with --split-part, only part 1 writes one)."""
    if not modelfile.wanted(args) or args.split_part not in (None, 1):
        return []
    return [modelfile.modelfile_path(p) for p in out_paths]


def _refuse_inputs(args, outputs, config_path=None, tokenizer_path=None):
    """No output (a GGUF file or Modelfile) may be one of the files this run reads, whatever the options; no two
    outputs may be one file."""
    publish.refuse_duplicates(outputs)
    ckpt = Path(args.ckpt)
    configs = hparams.config_files(config_path) if config_path else [args.config]
    inputs = [("checkpoint", ckpt), ("base checkpoint", args.base), *(("config", c) for c in configs),
              ("strategy", args.strategy), ("map", args.map if args.map.endswith(".json") else None),
              ("chat template", args.chat_template if args.chat_template and Path(args.chat_template).is_file()
               else None), ("importance matrix", args.imatrix),
              ("LoRA config", (ckpt if ckpt.is_dir() else ckpt.parent) / "adapter_config.json")]
    for folder in {ckpt, Path(args.base) if args.base else None} - {None}:
        if folder.is_dir():
            inputs.append(("strategy", folder.parent / "strategy"))      # MindFormers' default place
    for tokenizer in {Path(p) for p in (args.tokenizer, tokenizer_path) if p}:
        inputs.append(("tokenizer", tokenizer))
        folder = tokenizer if tokenizer.is_dir() else tokenizer.parent
        inputs += [("tokenizer", folder / f) for f in vocabulary.SIDE_FILES]
    publish.refuse_inputs(outputs, inputs)


def _set_size(target, plan):
    """The bytes of every file of ``target``'s set (headers included), before any is written."""
    total = 0
    for shard in target.shards:
        infos = [TensorInfo(plan.outputs[i].name, plan.outputs[i].shape, target.types[i])
                 for i in range(shard.first, shard.stop)]
        total += GGUFWriter(_Discard()).write_header(shard.kvs, infos)
    return total


class _Discard:
    def write(self, data):
        return len(data)


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
    outputs = plan.outputs
    target = Target(args.outtype[0], out_path, [(o.ggml_type, None) for o in outputs], kvs)
    target.nbytes = [TensorInfo(o.name, o.shape, t).nbytes for o, t in zip(outputs, target.types)]
    target.shards = target.parts = [Shard(0, 1, Path(out_path), 0, len(outputs), kvs)]
    result = Result(outputs={target.outtype: [Path(out_path)]}, tensors=len(outputs), skipped=list(plan.skipped))
    for note in plan.notes:
        warn(args, note)
    for fact in plan.facts:
        log(args, f"note: {fact}")
    if args.verbose or args.dry_run:
        _print_plan(plan, [target], sys.stdout if args.dry_run else sys.stderr)
    if args.dry_run or getattr(args, "plan_only", False):
        return result
    _write([target], plan, args, fmap)
    size = target.shards[0].size
    log(args, f"wrote {out_path}: LoRA adapter for {fmap.arch}, {len(outputs)} tensors ({len(pairs)} pairs, rank "
              f"{rank}, alpha {alpha:g}), {human_bytes(size)}, {target.outtype}, "
              f"{time.monotonic() - started:.1f} s; load it with llama.cpp's --lora on the base GGUF")
    result.written, result.bytes = [Path(out_path)], size
    result.seconds = time.monotonic() - started
    return result


class Target:
    """One output: its --outtype preset, OUT path, per-tensor types and metadata, its files (shards: one, or
    the splits of a set; parts are the shards this run writes) and with an importance matrix the importances per
    tensor ([n_expert, n_per_row] or None)."""

    def __init__(self, outtype, path, types, kvs, weights=None, imatrix_warnings=()):
        self.outtype, self.path, self.kvs = outtype, path, kvs
        self.types = [t for t, _ in types]
        self.notes = [note for _, note in types if note]
        self.weights = weights
        self.imatrix_warnings = list(imatrix_warnings)
        self.shards = []
        self.parts = []


@dataclass
class Shard:
    """One file of an output: split ``index`` (0-based) of ``count``, tensors [first, stop) of the plan."""
    index: int
    count: int
    path: Path
    first: int
    stop: int
    kvs: list
    size: int = 0


def _target(outtype, path, plan, fmap, vocab, name, args, imatrix=None):
    preset = quant_policy.preset(outtype)
    use = imatrix is not None and preset.quantized
    types = plan.types(outtype, has_imatrix=use)
    notes = [(t, f"{o.name}: {note}" if note else None) for o, (t, note) in zip(plan.outputs, types)]
    kvs = metadata.build(fmap, plan, vocab, preset, name)
    weights, warnings = None, []
    if use:
        weights = []
        for o, (t, _) in zip(plan.outputs, types):
            w = None
            if t not in (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16):
                # llama-quantize looks every quantized tensor up (a wrong length stops it even for Q8_0)
                w, warning = imatrix.for_tensor(o.name, o.shape)
                if warning and t in weighted.WEIGHTED_TYPES:
                    warnings.append(warning)
            weights.append(w)
        kvs = kvs + imatrix.kvs()
    target = Target(outtype, path, notes, kvs, weights, warnings)
    target.nbytes = [TensorInfo(o.name, o.shape, t).nbytes for o, t in zip(plan.outputs, target.types)]
    groups = split.plan(target.nbytes, args.split_max_size, args.split_max_tensors)
    paths = split.names(path, len(groups))
    total = len(plan.outputs)
    for k, ((first, stop), shard_path) in enumerate(zip(groups, paths)):
        if len(groups) == 1:
            kvs = target.kvs
        else:
            kvs = (target.kvs if k == 0 else []) + split.keys(k, len(groups), total)
        target.shards.append(Shard(k, len(groups), shard_path, first, stop, kvs))
    return target


def _choose_parts(targets, args):
    """The shards this run writes: all, or with --split-part K split K of each output that has one."""
    if args.split_part is None:
        for target in targets:
            target.parts = list(target.shards)
        return
    k = args.split_part
    for target in targets:
        target.parts = target.shards[k - 1:k]
        if not target.parts:
            plural = "s" if len(target.shards) > 1 else ""
            print(f"ms2gguf: note: {target.outtype} has {len(target.shards)} split{plural}: no split {k} to write "
                  f"for {target.path}", file=sys.stderr)
    if not any(t.parts for t in targets):
        counts = ", ".join(f"{t.outtype} {len(t.shards)}" for t in targets)
        raise ConvertError(f"--split-part {k}: the split plan has fewer files ({counts})")


def _print_splits(targets, stream):
    for target in targets:
        shards = target.shards
        sizes = [sum(target.nbytes[s.first:s.stop]) for s in shards]
        if len(shards) == 1:
            print(f"split  {target.outtype}: 1 file, {shards[0].path}", file=stream)
            continue
        print(f"split  {target.outtype}: {len(shards)} files", file=stream)
        for s, size in zip(shards, sizes):
            print(f"split  {s.path}  {s.stop - s.first} tensors, {human_bytes(size)} of tensor data", file=stream)


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


def _write(targets, plan, args, fmap, extras=()):
    """Stream every tensor into one temporary file per shard being written, check each output, then publish them
    all (with ``extras``, (path, text) pairs such as the Modelfile) or none.

    Each tensor is read (and transformed) once and encoded for every shard that holds it; a tensor no shard of
    this run holds is not read. After any error or signal no temporary file is left and no OUT is touched.
    """
    jobs = [(target, shard) for target in targets for shard in target.parts]
    outputs = []
    try:
        for target, shard in jobs:
            shard.output = _temp_output(shard.path, args, outputs)
            shard.file = open(shard.output.fd, "wb", closefd=False)
            shard.tmp = shard.output.readable
            shard.writer = GGUFWriter(shard.file)
            infos = [TensorInfo(plan.outputs[i].name, plan.outputs[i].shape, target.types[i])
                     for i in range(shard.first, shard.stop)]
            shard.size = shard.output.size = shard.writer.write_header(shard.kvs, infos)
        for path, text in extras:
            _temp_output(path, args, outputs).write_text(text)
        publish.check_space(outputs)
        total = sum(sum(target.nbytes[shard.first:shard.stop]) for target, shard in jobs)
        values = ValueCheck(args.ckpt, args.allow_nonfinite, args.clamp_f16)
        with progress(total, "writing", args.quiet) as bar:
            for i, out in enumerate(plan.outputs):
                writers = [(shard.writer, target.types[i], target.weights[i] if target.weights else None)
                           for target, shard in jobs if shard.first <= i < shard.stop]
                if writers:
                    _write_tensor(writers, out, bar, args.threads, values)
        for warning in values.warnings():
            warn(args, warning)
        # no fsync: publishing only complete files guarantees that a failed or interrupted run leaves nothing at
        # OUT; durability against power loss is the filesystem's business, and an fsync would cost as much as
        # the copy itself
        for _, shard in jobs:
            shard.writer.finish()
            shard.file.close()
        for target in targets:
            if target.parts:
                _check_output(target, fmap, args.quiet)
        # each set from its end, so its first split (the file readers open) appears after the others; the
        # Modelfiles, which name them, last
        _publish([shard.output for target in targets for shard in reversed(target.parts)] + outputs[len(jobs):])
    except OSError as err:
        full = publish.no_space(outputs) if publish.is_no_space(err) else None     # while the files are open
        _discard(jobs, outputs)
        if full is not None:
            raise full from None
        raise
    except BaseException:
        _discard(jobs, outputs)
        raise


def _temp_output(path, args, outputs):
    """A new temporary file for ``path`` (appended to ``outputs``); stale ones of interrupted runs go first."""
    output = publish.Output(path, args.force)
    outputs.append(output)
    output.open()
    for stale in output.stale:
        log(args, f"note: removed {stale}, left by an interrupted run")
    return output


def _publish(outputs):
    """Give every complete temporary file its name, in this order: all or nothing (publish.publish)."""
    publish.publish(outputs)


def _discard(jobs, outputs):
    for _, shard in jobs:
        if getattr(shard, "file", None) is not None:
            shard.file.close()
    publish.discard(outputs)


def _check_output(target, fmap, quiet=False):
    """The new files must pass 'ms2gguf check' before they take their names: a whole output as one file or set;
    a part of a set (--split-part) as a part (its container and split keys)."""
    maps = [fmap] if fmap is not None else None
    if target.parts == target.shards:
        report = check.check_set([s.tmp for s in target.shards], maps)
    else:
        shard = target.parts[0]
        report = check.check_part(shard.tmp, shard.index, shard.count)
    shown = target.path if len(target.parts) == 1 and target.parts == target.shards else target.parts[0].path
    for problem in report.warnings:
        if problem.kind != "file-type":     # the summary explains file_type 0
            if not quiet:
                print(f"ms2gguf: warning: {escape(shown)}: {escape(problem.text)}", file=sys.stderr)
    if report.errors:
        more = f" (and {len(report.errors) - 1} more problems)" if len(report.errors) > 1 else ""
        raise ConvertError(f"{shown}: the converted GGUF fails its check, so it was not written: "
                           f"{report.errors[0].text}{more}")


def _write_tensor(writers, out, bar, threads, values=None):
    """One output tensor into each (writer, ggml type, importances or None): kernel copies where the bytes are the
    checkpoint's, otherwise the tensor is read once, band by band (plan.bands), and each band encoded for each
    type (with the importances of the expert its rows belong to). ``values`` (finite.ValueCheck) scans the values
    on the way: non-finite ones, and what F16 cannot hold."""
    encoded = []
    scanned = values is None
    for writer, ggml_type, weights in writers:
        writer.begin_tensor(out.name)
        if out.copies_as(ggml_type):
            tensor = out.source
            if not scanned:
                for offset, length in tensor.byte_ranges():
                    for chunk in tensor.source.chunks(offset, length):
                        values.raw(out, chunk, out.dtype_name)
                scanned = True
            for offset, length in tensor.byte_ranges():
                tensor.source.advise_sequential(offset, length)
                writer.copy_range(tensor.source.fileno(), offset, length)
                bar.update(length)
        else:
            encoded.append((writer, ggml_type, weights))
    if encoded:
        rows_per_expert = math.prod(out.shape[1:-1]) if len(out.shape) == 3 else None
        row = 0
        for band in planning.bands(out):
            blocks = values.band(out, band, out.dtype_name, {t for _, t, _ in encoded}) if values is not None else \
                {t: (band, out.dtype_name) for _, t, _ in encoded}
            for writer, ggml_type, weights in encoded:
                data_band, dtype_name = blocks[ggml_type]
                for lo, hi, w in _expert_runs(row, len(band) if band.ndim > 1 else 1, rows_per_expert, weights):
                    data = encode_rows(data_band[lo:hi] if band.ndim > 1 else data_band, dtype_name, ggml_type,
                                       threads, w)
                    writer.write(memoryview(data).cast("B"))
                    bar.update(data.nbytes)
            row += len(band) if band.ndim > 1 else 1
    for writer, _, _ in writers:
        writer.end_tensor()


def _expert_runs(row, n_rows, rows_per_expert, weights):
    """(lo, hi, importances) for the rows [row, row + n_rows) of a band: one run per expert they belong to
    (llama-quantize gives each expert its own slice of the entry), or one run."""
    if weights is None:
        return [(0, n_rows, None)]
    if rows_per_expert is None:
        return [(0, n_rows, weights[0])]
    runs, lo = [], 0
    while lo < n_rows:
        expert = (row + lo) // rows_per_expert
        hi = min(n_rows, (expert + 1) * rows_per_expert - row)
        runs.append((lo, hi, weights[expert]))
        lo = hi
    return runs


def _print_plan(plan, targets, stream):
    for name, reason in plan.skipped:
        print(f"skip   {escape(name)}  ({escape(reason)})", file=stream)
    width = max((len(o.name) for o in plan.outputs), default=10)
    for i, o in enumerate(plan.outputs):
        types = "/".join(GGMLQuantizationType(t.types[i]).name for t in targets)
        how = "copy" if all(o.copies_as(t.types[i]) for t in targets) else o.transform or "convert"
        names = [escape(t.name) for t in o.expr.sources()]
        source = names[0] if len(names) == 1 else f"{names[0]} (+{len(names) - 1} more)"
        print(f"tensor {escape(o.name):<{width}}  {types:<5} {'x'.join(map(str, o.shape)):<14} <- {source} "
              f"[{o.source.dtype.name}] {how}", file=stream)


def _summary(args, plan, target, seconds):
    params = sum(math.prod(o.shape) for o in plan.outputs)
    size = sum(s.size for s in target.parts)
    skipped = (f"{len(plan.skipped)} checkpoint entries skipped"
               f"{'; -v lists them' if plan.skipped and not args.verbose else ''}")
    if len(target.shards) == 1:
        log(args, f"wrote {target.path}: {len(plan.outputs)} tensors, {params:,} parameters, "
                  f"{human_bytes(size)}, {target.outtype}, {seconds:.1f} s ({skipped})")
    elif target.parts == target.shards:
        log(args, f"wrote {len(target.shards)} files {target.shards[0].path} ... {target.shards[-1].path.name}: "
                  f"{len(plan.outputs)} tensors, {params:,} parameters, {human_bytes(size)}, {target.outtype}, "
                  f"{seconds:.1f} s ({skipped})")
    else:
        shard = target.parts[0]
        log(args, f"wrote split {shard.index + 1} of {shard.count} {shard.path}: {shard.stop - shard.first} of "
                  f"{len(plan.outputs)} tensors, {human_bytes(size)}, {target.outtype}, {seconds:.1f} s")
    if target.outtype == "f32":
        log(args, "note: general.file_type is 0 (ALL_F32); Ollama reads that as 'unknown' and will not quantize "
                  "this file at create time (convert with --outtype f16 or a quantized type instead)")
