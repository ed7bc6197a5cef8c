"""The Ollama side of a conversion: ``<OUT stem>.Modelfile`` beside OUT and ``ollama create``.

Ollama's Modelfile parser (``ollama/ollama:parser/parser.go``) takes triple-quoted multi-line values and
keeps everything between the quotes; ``FROM ./x.gguf`` is resolved against the Modelfile's directory.
"""

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from . import publish
from .errors import ConvertError

# Ollama allocates the KV cache for num_ctx tokens; a 128k-context model would need gigabytes for it,
# so the Modelfile asks for at most this much and says how to raise it.
NUM_CTX_CAP = 8192


def modelfile_path(out_path):
    out_path = Path(out_path)
    return out_path.with_name(out_path.stem + ".Modelfile")


def wanted(args):
    return bool(args.modelfile or args.ollama is not None or args.system is not None)


def check_options(args, out_path):
    """Problems with --modelfile / --ollama / --system found before any conversion work."""
    if not wanted(args):
        return
    path = modelfile_path(out_path)
    if publish.destination(path).exists() and not args.force:
        raise ConvertError(f"{path}: already exists (use --force to overwrite)")
    if args.ollama is not None and (not args.ollama or args.ollama.startswith("-")
                                    or any(c.isspace() for c in args.ollama)):
        raise ConvertError(f"--ollama {args.ollama!r}: not a model name (e.g. mymodel or mymodel:q8)")
    if args.system is not None and '"""' in args.system:
        raise ConvertError('--system: the text must not contain """ (it ends a Modelfile value)')
    if "\n" in Path(out_path).name or "\r" in Path(out_path).name:
        raise ConvertError(f"{out_path!r}: a file name with a line break cannot be named in a Modelfile")


def num_ctx(context_length):
    return max(1, min(int(context_length), NUM_CTX_CAP))


def stops(chat, vocab):
    """The chat format's turn markers, and the end-of-turn and end-of-sequence tokens' texts."""
    values = list(chat.format.stops) if chat.format is not None else []
    for name in ("eot", "eos"):
        token_id = vocab.special.get(name)
        if token_id is None or not 0 <= token_id < len(vocab.tokens):
            continue
        text = vocab.tokens[token_id]
        if text and text not in values and '"' not in text and not any(c in text for c in "\r\n"):
            values.append(text)
    return values


def render(gguf_names, chat, vocab, context_length, system=None, modelfile_name=None):
    """The Modelfile text. ``gguf_names``: the GGUF file name, or the names of a split set's files (one FROM line
    each, in split order: Ollama merges the FROM lines, and a FROM of the folder would take every GGUF in it)."""
    names = [gguf_names] if isinstance(gguf_names, str) else list(gguf_names)
    lines = ["# Ollama Modelfile written by ms2gguf",
             f"# import with: ollama create NAME -f {modelfile_name or modelfile_path(names[0]).name}"]
    if len(names) > 1:
        lines.append(f"# a split set of {len(names)} files: Ollama versions before the llama-server engine "
                     "(2026-05) cannot import split sets")
    lines += [f"FROM ./{name}" for name in names]
    if chat.format is not None:
        lines.append(f"# chat format: {chat.format.name} (from {chat.origin})")
        lines.append(f'TEMPLATE """{chat.format.go}"""')
    for value in stops(chat, vocab):
        lines.append(f'PARAMETER stop "{value}"')
    ctx = num_ctx(context_length)
    if ctx < int(context_length):
        lines.append(f"# the model was trained for {int(context_length)} tokens of context; num_ctx is capped at "
                     f"{NUM_CTX_CAP} to bound the KV cache's memory (raise it if you have room)")
    lines.append(f"PARAMETER num_ctx {ctx}")
    if system is not None:
        lines.append(f'SYSTEM """{system}"""')
    return "\n".join(lines) + "\n"


def planned(args, out_path, files, total, plan, vocab, chat):
    """(path, text) of the Modelfile the options ask for beside OUT ``out_path``, for OUT's ``files`` (OUT, or a
    split set's files, ``total`` bytes together), or None; it is published with the GGUF files, all or nothing
    (publish.py)."""
    if not wanted(args):
        return None
    path = modelfile_path(out_path)
    files = [Path(f) for f in files]
    if len(files) > 1 and not args.quiet:
        print(f"ms2gguf: warning: {path.name} imports a split set of {len(files)} files: older Ollama versions "
              "(before its llama-server engine, 2026-05) cannot import split sets, and 'ollama create' merges the "
              f"set into one file, which needs about {total / 1e9:.1f} GB ({total:,} bytes) of free disk where "
              "Ollama keeps its models", file=sys.stderr)
    if chat.format is None and not args.quiet:
        why = ("the chat template is not one of the built-in formats" if chat.jinja else "there is no chat template")
        print(f"ms2gguf: warning: {path.name} has no TEMPLATE: {why} (use --chat-template NAME; the GGUF's "
              "tokenizer.chat_template, if any, is used by newer Ollama)", file=sys.stderr)
    return path, render([f.name for f in files], chat, vocab, plan.hp["context_length"], args.system, path.name)


def after_conversion(args, path, chat, log):
    """Report the published Modelfile and run ``ollama create`` if asked; returns the exit status."""
    log(f"wrote {path}" + (f" (chat format {chat.format.name})" if chat.format is not None else ""))
    if args.ollama is None:
        return 0
    return run_ollama(args.ollama, path)


def run_ollama(name, path):
    """``ollama create NAME -f PATH``, its output streamed; its exit status becomes ours."""
    path = Path(os.path.abspath(path))
    exe = shutil.which("ollama")
    command = ["ollama", "create", name, "-f", str(path)]
    if exe is None:
        print("ms2gguf: no 'ollama' executable on PATH; to import the model later, run:\n"
              f"  {shlex.join(command)}", file=sys.stderr)
        return 0
    print(f"ms2gguf: running {shlex.join(command)}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        status = subprocess.run([exe] + command[1:], cwd=path.parent).returncode
    except OSError as err:
        raise ConvertError(f"{exe}: cannot run ({err.strerror or err})") from None
    if status != 0:
        status = status if status > 0 else 128 - status       # killed by a signal: shell convention
        print(f"ms2gguf: error: 'ollama create' failed (exit status {status}); the GGUF and {path.name} are "
              "kept", file=sys.stderr)
    return status
