"""The ``ms2gguf`` command line.

    ms2gguf inspect CKPT [--json]         what a checkpoint holds
    ms2gguf check FILE.gguf               validate a GGUF file
    ms2gguf CKPT MAP OUT [options]        convert (anything that is not a subcommand)
"""

import argparse
import json
import os
import sys

from msckpt import CheckpointError, open_checkpoint
from msckpt.encryption import MODES

from .errors import ConvertError
from .publish import Terminated, outcome, signals_cleaned_up

SUBCOMMANDS = ("inspect", "check")

USAGE = """\
usage: ms2gguf CKPT [MAP] OUT [options]   convert a MindSpore checkpoint to GGUF (MAP: a map or 'auto')
       ms2gguf inspect CKPT [--json]      list what a checkpoint holds
       ms2gguf check FILE.gguf            validate a GGUF file

Run 'ms2gguf --help', 'ms2gguf inspect --help' or 'ms2gguf check --help' for the options."""


def _dec_key(text):
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise argparse.ArgumentTypeError("--dec-key must be hexadecimal, e.g. 30313233...") from None
    if not key:
        raise argparse.ArgumentTypeError("--dec-key is empty")
    return key


def add_decryption_options(parser):
    parser.add_argument("--dec-key", type=_dec_key, metavar="HEX",
                        help="key of an encrypted checkpoint, in hex (as given to MindSpore's enc_key)")
    parser.add_argument("--dec-mode", choices=MODES, default="AES-GCM",
                        help="cipher of an encrypted checkpoint (default: %(default)s)")


def inspect_parser():
    p = argparse.ArgumentParser(prog="ms2gguf inspect", description="List the entries of a MindSpore checkpoint: "
                                "names, dtypes, shapes, sizes, and what kind of entry each is; for sharded saves "
                                "also the layout, the files, how every parameter is split, and the --step values.")
    p.add_argument("ckpt", metavar="CKPT", help=".ckpt (plain, with CRC, or encrypted) or .safetensors file, or a "
                   "directory: MindFormers Checkpoint 2.0 (its root or one iteration_*/), a rank_N/ tree, or "
                   ".safetensors shards")
    p.add_argument("--json", action="store_true", help="print JSON for scripts instead of a table")
    p.add_argument("--no-crc", action="store_true", help="do not verify the CRC (it reads the whole file)")
    p.add_argument("--strategy", metavar="FILE_OR_DIR", help="strategy of a distributed CKPT directory (rank_N/)")
    p.add_argument("--step", metavar="N", help="which save to read: the iteration of a Checkpoint 2.0 root (N), or "
                   "the step of a rank_N/ tree (N or EPOCH_N); inspect lists the values")
    add_decryption_options(p)
    return p


def cmd_inspect(argv):
    from .report import crc_problem, describe, format_text

    args = inspect_parser().parse_args(argv)
    shards = {k: v for k, v in (("strategy", args.strategy), ("step", args.step)) if v is not None}
    if os.path.isdir(args.ckpt):
        shards["optimizer"] = True          # Checkpoint 2.0 keeps optimizer state in files of its own; list it too
    with open_checkpoint(args.ckpt, dec_key=args.dec_key, dec_mode=args.dec_mode, **shards) as ckpt:
        info = describe(ckpt, check_crc=not args.no_crc)
    if args.json:
        print(json.dumps(info, indent=1, default=str))
    else:
        print(format_text(info))
    problem = crc_problem(info)
    if problem:
        raise problem
    return 0


def cmd_check(argv):
    from .check import main as check_main
    return check_main(argv)


def cmd_convert(argv):
    from .conversion import main as convert_main
    return convert_main(argv)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        if argv:
            from .conversion import build_parser
            build_parser().print_help()
            print()
        print(USAGE)
        return 0 if argv else 2
    if argv[0] == "--version":
        from importlib.metadata import PackageNotFoundError, version
        try:
            print(f"ms2gguf {version('ms2gguf')}")
        except PackageNotFoundError:
            print("ms2gguf (not installed)")
        return 0
    command = {"inspect": cmd_inspect, "check": cmd_check}.get(argv[0], None)
    try:
        with signals_cleaned_up():
            if command:
                return command(argv[1:])
            return cmd_convert(argv)
    except (CheckpointError, ConvertError) as err:
        print(f"ms2gguf: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"ms2gguf: interrupted; {outcome()}", file=sys.stderr)
        return 130
    except Terminated as stop:
        print(f"ms2gguf: stopped by {stop.name}; {outcome()}", file=sys.stderr)
        return 128 + stop.signum
    except BrokenPipeError:
        return 1
    except OSError as err:
        where = f"{err.filename}: " if err.filename else ""
        print(f"ms2gguf: error: {where}{err.strerror or err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
