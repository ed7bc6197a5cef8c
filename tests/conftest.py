import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
FIXTURES = TESTS / "fixtures"
LLAMA = FIXTURES / "llama"
TOKENIZER = LLAMA / "tokenizer" / "tokenizer.model"
sys.path.insert(0, str(TESTS))     # the llama.cpp oracle helper (tests/llamacpp.py)


def convert(ckpt, out, *options, map_name="llama2", tokenizer=TOKENIZER):
    """Run the converter in-process like the CLI does; returns the exit status."""
    from gguf_out.cli import main

    args = [str(ckpt), map_name, str(out), "--tokenizer", str(tokenizer), "-q", *map(str, options)]
    return main(args)


@pytest.fixture(scope="session")
def llama_fixtures():
    return LLAMA
