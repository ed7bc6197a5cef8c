"""``ms2gguf CKPT MAP OUT``: plan, then stream every tensor into a temporary GGUF, then rename it into place."""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from gguf import GGMLQuantizationType
from tqdm import tqdm

from msckpt import open_checkpoint

from . import check, detect, hparams, metadata, modelfile, plan as planning, templates, vocab as vocabulary
from .encode import OUTTYPES, encode_rows
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
    p.add_argument("ckpt", metavar="CKPT", help="checkpoint: .ckpt (plain, CRC, encrypted) or .safetensors")
    p.add_argument("map", metavar="MAP", nargs="?", help="family map: a bundled name (e.g. llama2), a path to a "
                   ".json map, or 'auto' (the default when OUT ends in .gguf) to choose by tensor names and config")
    p.add_argument("out", metavar="OUT", help="output .gguf file")
    p.add_argument("--config", metavar="FILE", help="MindFormers yaml or HF config.json "
                   "(default: config.yaml / config.json / the only *.yaml beside CKPT)")
    p.add_argument("--tokenizer", metavar="FILE", help="tokenizer file or its directory: SentencePiece "
                   "tokenizer.model, or for BPE maps tokenizer.json, vocab.json + merges.txt or a tiktoken file "
                   "(default: beside CKPT); a tokenizer_config.json beside it supplies the chat template and "
                   "special tokens")
    p.add_argument("--outtype", default="f16", type=str.lower, choices=list(OUTTYPES),
                   help="type of the 2-D weights; 1-D tensors stay F32 (default: %(default)s)")
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
    p.add_argument("--strategy", metavar="FILE_OR_DIR", help="parallel strategy of a distributed CKPT directory "
                   "(rank_N/ shards): a strategy file (.ckpt/.json) or a directory of per-rank files (default: "
                   "CKPT/strategy* or MindFormers' CKPT/../strategy/)")
    p.add_argument("--step", metavar="N", help="distributed CKPT: which saved step to read when a rank directory "
                   "holds several (N or EPOCH_N from <prefix>-EPOCH_N.ckpt; default: the newest)")
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


def main(argv):
    args = build_parser().parse_args(argv)
    if args.map is None:
        if not args.out.endswith(".gguf"):
            raise ConvertError(f"expected CKPT MAP OUT, or CKPT OUT.gguf to choose the map automatically "
                               f"(got CKPT {args.ckpt} and {args.out})")
        args.map = "auto"
    return run(args)


def _tokenizer_path(args, fmap):
    path = Path(args.tokenizer) if args.tokenizer else vocabulary.find_tokenizer(args.ckpt, fmap.tokenizer)
    if path is None:
        wanted = " / ".join(vocabulary.TOKENIZER_FILES.get(fmap.tokenizer, ("tokenizer.model",)))
        raise ConvertError(f"{args.ckpt}: no tokenizer ({wanted}) beside the checkpoint; pass --tokenizer")
    return path


def log(args, text):
    if not args.quiet:
        print(text, file=sys.stderr)


def run(args):
    started = time.monotonic()
    out_path = Path(args.out)
    if not args.dry_run:
        if out_path.exists() and not args.force:
            raise ConvertError(f"{out_path}: already exists (use --force to overwrite)")
        if out_path.is_dir():
            raise ConvertError(f"{out_path}: is a directory")
        if not out_path.resolve().parent.is_dir():
            raise ConvertError(f"{out_path}: the directory {out_path.resolve().parent} does not exist")
        modelfile.check_options(args, out_path)
    fmap = None if args.map == "auto" else load_map(args.map)
    config_path = Path(args.config) if args.config else hparams.find_config(args.ckpt)
    if config_path is None:
        raise ConvertError(f"{args.ckpt}: no config.yaml / config.json beside the checkpoint; pass --config")
    config = hparams.read_config(config_path)
    tokenizer_path = _tokenizer_path(args, fmap) if fmap else None

    shards = {k: v for k, v in (("strategy", args.strategy), ("step", args.step)) if v is not None}
    with open_checkpoint(args.ckpt, dec_key=args.dec_key, dec_mode=args.dec_mode, verify_crc=args.verify_crc,
                         tmp_dir=args.tmp_dir, **shards) as ckpt:
        if fmap is None:
            fmap = detect.choose_map(ckpt, config, config_path, args.tokenizer)
            log(args, f"map: {fmap.family} ({fmap.path}), chosen from the tensor names and {config_path}")
            tokenizer_path = _tokenizer_path(args, fmap)
        options = planning.Options(args.outtype, args.rope_layout, args.fused_layout,
                                   _train_tp(args, ckpt, fmap, config))
        plan = planning.build(ckpt, fmap, config, config_path, options)
        vocab = vocabulary.load_tokenizer(tokenizer_path, fmap)
        vocabulary.pad_to(vocab, int(plan.hp["vocab_size"]))
        chat = templates.apply(args.chat_template, vocab, fmap)
        name = args.name or Path(args.ckpt).stem
        kvs = metadata.build(fmap, plan, vocab, args.outtype, name)
        for warning in vocab.warnings + plan.notes:
            print(f"ms2gguf: warning: {warning}", file=sys.stderr)
        if args.verbose or args.dry_run:
            _print_plan(plan, sys.stdout if args.dry_run else sys.stderr)
        if args.dry_run:
            return 0
        infos = [TensorInfo(o.name, o.shape, o.ggml_type) for o in plan.outputs]
        size = _write(out_path, kvs, infos, plan, args, fmap)
    _summary(args, plan, size, time.monotonic() - started, out_path)
    return modelfile.after_conversion(args, out_path, plan, vocab, chat, lambda text: log(args, text))


def _train_tp(args, ckpt, fmap, config):
    """--train-tp, else (contiguous fused tensors only: the others are the same for any degree) what a
    distributed checkpoint's strategy shows for its fused tensors, else 1."""
    layouts = planning.fused_layouts(fmap, config, planning.Options(fused_layout=args.fused_layout))
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
    tp = hint([t.name for t in ckpt if getattr(fmap.rule_for(t.name)[0], "split", None)]) or 1
    if tp > 1:
        log(args, f"note: --train-tp {tp} from the strategy (fused tensors' rows are split {tp} ways)")
    return tp


def _write(out_path, kvs, infos, plan, args, fmap=None):
    folder = out_path.resolve().parent
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{out_path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            writer = GGUFWriter(f)
            size = writer.write_header(kvs, infos)
            total = sum(i.nbytes for i in infos)
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="writing",
                      disable=args.quiet, file=sys.stderr, leave=False) as bar:
                for out, info in zip(plan.outputs, infos):
                    _write_tensor(writer, out, info, bar)
            writer.finish()
            f.flush()
            os.fsync(f.fileno())
        _check_output(tmp_name, out_path, fmap)
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, out_path)
        return size
    except BaseException:
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


def _write_tensor(writer, out, info, bar):
    writer.begin_tensor(info.name)
    tensor = out.source
    if out.raw_copy:
        for offset, length in tensor.byte_ranges():
            tensor.source.advise_sequential(offset, length)
            writer.copy_range(tensor.source.fileno(), offset, length)
            bar.update(length)
    else:
        for block in planning.row_blocks(out):
            data = encode_rows(block, tensor.dtype.name, out.ggml_type)
            writer.write(memoryview(data).cast("B"))
            bar.update(data.nbytes)
    writer.end_tensor()


def _print_plan(plan, stream):
    for name, reason in plan.skipped:
        print(f"skip   {name}  ({reason})", file=stream)
    width = max((len(o.name) for o in plan.outputs), default=10)
    for o in plan.outputs:
        how = "copy" if o.raw_copy else o.transform or "convert"
        print(f"tensor {o.name:<{width}}  {GGMLQuantizationType(o.ggml_type).name:<5} "
              f"{'x'.join(map(str, o.shape)):<14} <- {o.source.name} [{o.source.dtype.name}] {how}", file=stream)


def _summary(args, plan, size, seconds, out_path):
    params = sum(int(o.shape[0]) * (int(o.shape[1]) if len(o.shape) > 1 else 1) for o in plan.outputs)
    log(args, f"wrote {out_path}: {len(plan.outputs)} tensors, {params:,} parameters, {human_bytes(size)}, "
              f"{args.outtype}, {seconds:.1f} s ({len(plan.skipped)} checkpoint entries skipped"
              f"{'; -v lists them' if plan.skipped and not args.verbose else ''})")
    if args.outtype == "f32":
        log(args, "note: general.file_type is 0 (ALL_F32); Ollama reads that as 'unknown' and will not quantize "
                  "this file at create time (convert with --outtype f16 or a quantized type instead)")
