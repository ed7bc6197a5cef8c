"""The Python API: ``from gguf_out import convert``.

``convert(ckpt, out, map="auto", outtype="f16", config=None, tokenizer=None, **options)`` takes the command
line's options as keyword arguments (long names with underscores: ``split_max_size="50G"``, ``threads=4``,
``modelfile=True``; a list for a comma list such as ``outtype=["q4_k_m", "q8_0"]``) and runs the same conversion
as ``ms2gguf``. It returns a ``Result`` and raises ``gguf_out.ConvertError`` for every problem (a checkpoint
reader's ``CheckpointError`` or an ``OSError`` wrapped, the original kept as ``__cause__``).
"""

import argparse

from msckpt import CheckpointError

from .errors import ConvertError


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise ConvertError(message)


def _parser():
    from .conversion import build_parser

    parser = build_parser()
    parser.__class__ = _Parser          # the same options, errors raised instead of printed and exited
    return parser


def options(parser=None):
    """{name: argparse action} of the conversion options a keyword argument may name."""
    parser = parser or _parser()
    return {a.dest: a for a in parser._actions if a.option_strings and a.dest != "help"}


def argv(ckpt, out, map="auto", outtype="f16", config=None, tokenizer=None, parser=None, **opts):
    """The command line ``ms2gguf`` would be given for these arguments."""
    known = options(parser)
    args = [str(ckpt), str(map or "auto"), str(out)]
    opts = dict(outtype=outtype, config=config, tokenizer=tokenizer, **opts)
    for key, value in opts.items():
        action = known.get(key)
        if action is None:
            raise ConvertError(f"unknown option '{key}' (the options are the command line's long names with "
                               f"underscores: {', '.join(sorted(known))})")
        flag = action.option_strings[-1]
        if isinstance(action, argparse._StoreTrueAction):
            if not isinstance(value, bool):
                raise ConvertError(f"option '{key}' is a flag: give true or false, not {value!r}")
            if value:
                args.append(flag)
            continue
        if value is None:
            continue
        if isinstance(value, bool):
            raise ConvertError(f"option '{key}' takes a value, not {value}")
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        elif isinstance(value, (bytes, bytearray)):
            value = bytes(value).hex()
        args.append(f"{flag}={value}")
    return args


def _run(ckpt, out, map, outtype, config, tokenizer, plan_only, opts):
    from .conversion import run

    opts.setdefault("quiet", True)
    parser = _parser()
    args = parser.parse_args(argv(ckpt, out, map, outtype, config, tokenizer, parser=parser, **opts))
    args.plan_only = plan_only
    try:
        return run(args)
    except CheckpointError as err:
        raise ConvertError(str(err)) from err
    except OSError as err:
        where = f"{err.filename}: " if err.filename else ""
        raise ConvertError(f"{where}{err.strerror or err}") from err


def convert(ckpt, out, map="auto", outtype="f16", config=None, tokenizer=None, **options):
    """Convert checkpoint ``ckpt`` to GGUF ``out``, as ``ms2gguf CKPT MAP OUT [options]`` does; returns a
    ``gguf_out.conversion.Result`` (outputs per outtype, files written, tensors, bytes, seconds, skipped entries).
    Progress and summary are off unless ``quiet=False``; warnings go to stderr."""
    result = _run(ckpt, out, map, outtype, config, tokenizer, False, options)
    if result.status:
        raise ConvertError(f"'ollama create' failed (exit status {result.status}); the GGUF and its Modelfile "
                           "are kept")
    return result


def plan(ckpt, out, map="auto", outtype="f16", config=None, tokenizer=None, **options):
    """The files ``convert`` would write, without writing or reading any tensor data: a Result whose ``outputs``
    lists each outtype's files (a split set's every file)."""
    return _run(ckpt, out, map, outtype, config, tokenizer, True, options)
