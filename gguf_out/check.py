"""``ms2gguf check FILE.gguf`` (reserved; the full validation is a later issue)."""

import sys


def main(argv):
    print("ms2gguf: error: 'check' is not implemented yet", file=sys.stderr)
    return 2
