"""The ``ms2gguf`` command line.

    ms2gguf inspect CKPT [--json]         what a checkpoint holds
    ms2gguf check FILE.gguf               validate a GGUF file
    ms2gguf bulk JOBS                     many conversions in parallel (local workers or Dask)
    ms2gguf CKPT MAP OUT [options]        convert (anything that is not a subcommand)
"""

import argparse
import os
import sys

from msckpt import CheckpointError, open_checkpoint
from msckpt.encryption import MODES

from .errors import ConvertError
from .output import escape, escape_lines, escaped, write_json
from .publish import Terminated, outcome, signals_cleaned_up

SUBCOMMANDS = ("inspect", "check", "bulk")

USAGE = """\
usage: ms2gguf CKPT [MAP] OUT [options]   convert a MindSpore checkpoint to GGUF (MAP: a map or 'auto')
       ms2gguf inspect CKPT [--json]      list what a checkpoint holds
       ms2gguf check FILE.gguf            validate a GGUF file (the first file of a split set: the set)
       ms2gguf bulk JOBS [--workers N | --scheduler tcp://HOST:PORT]   many conversions in parallel

Run 'ms2gguf --help', 'ms2gguf inspect --help', 'ms2gguf check --help' or 'ms2gguf bulk --help' for the
options."""


DEBUG_ENV = "MS2GGUF_DEBUG"        # set to 1: an internal error prints its traceback
KEY_ENV = "MS2GGUF_DEC_KEY"        # the decryption key in hex, kept out of argv (ps, shell history)


def machine_cores():
    """The cores this process may run on (--threads is capped at this)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _hex_key(text, where):
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        raise ConvertError(f"{where} must be hexadecimal, e.g. 30313233...") from None
    if not key:
        raise ConvertError(f"{where} is empty")
    if len(key) > 64:
        raise ConvertError(f"{where} is {len(key)} bytes long; MindSpore's keys are 16, 24 or 32 bytes")
    return key


def _dec_key(text):
    try:
        return _hex_key(text, "--dec-key")
    except ConvertError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def dec_key(args):
    """The decryption key: --dec-key HEX, --dec-key-file FILE (hex text), or the MS2GGUF_DEC_KEY variable (hex)."""
    given = [name for name, value in (("--dec-key", args.dec_key), ("--dec-key-file", args.dec_key_file))
             if value is not None]
    if len(given) > 1:
        raise ConvertError("give the key once: --dec-key or --dec-key-file")
    if args.dec_key is not None:
        return args.dec_key
    if args.dec_key_file is not None:
        from msckpt import safeio
        data = safeio.read_bytes(args.dec_key_file, ConvertError, "key file", limit=4096)
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            raise ConvertError(f"{args.dec_key_file}: the key file must hold the key in hex") from None
        return _hex_key(text, f"{args.dec_key_file}: the key")
    if os.environ.get(KEY_ENV):
        return _hex_key(os.environ[KEY_ENV], KEY_ENV)
    return None


def add_decryption_options(parser):
    parser.add_argument("--dec-key", type=_dec_key, metavar="HEX",
                        help="key of an encrypted checkpoint, in hex (as given to MindSpore's enc_key); visible to "
                        f"other users in ps: prefer --dec-key-file or the {KEY_ENV} environment variable")
    parser.add_argument("--dec-key-file", metavar="FILE", help="file holding the key in hex")
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
    args.dec_key = dec_key(args)
    shards = {k: v for k, v in (("strategy", args.strategy), ("step", args.step)) if v is not None}
    if os.path.isdir(args.ckpt):
        shards["optimizer"] = True          # Checkpoint 2.0 keeps optimizer state in files of its own; list it too
    with open_checkpoint(args.ckpt, dec_key=args.dec_key, dec_mode=args.dec_mode, **shards) as ckpt:
        info = describe(ckpt, check_crc=not args.no_crc)
    if args.json:
        write_json(info)
    else:
        print(escape_lines(format_text(escaped(info))))
    problem = crc_problem(info)
    if problem:
        raise problem
    return 0


def cmd_check(argv):
    from .check import main as check_main
    return check_main(argv)


def cmd_bulk(argv):
    from .bulk import main as bulk_main
    return bulk_main(argv)


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
    command = {"inspect": cmd_inspect, "check": cmd_check, "bulk": cmd_bulk}.get(argv[0], None)
    import warnings

    import numpy as np
    # values that overflow or are not finite are checked and reported by name (gguf_out/finite.py); numpy's own
    # warnings would only repeat them without saying which tensor, and would leak through -q
    np.seterr(all="ignore")
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    try:
        with signals_cleaned_up():
            if command:
                return command(argv[1:])
            return cmd_convert(argv)
    except (CheckpointError, ConvertError) as err:
        return error(err)
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
        return error(f"{where}{err.strerror or err}")
    except MemoryError:
        return error("out of memory")
    except RecursionError:
        return error("internal error: input nested too deeply (RecursionError); please report it with the input")
    except Exception as err:     # a bug: one line, the traceback only on request
        if os.environ.get(DEBUG_ENV):
            raise
        return error(f"internal error: {type(err).__name__}: {err} (please report it; rerun with {DEBUG_ENV}=1 "
                     "for the traceback)")


def error(err):
    """The one error line: control characters escaped, so a name from a file cannot forge or hide output."""
    print(f"ms2gguf: error: {escape(err)}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
