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


# Bounds on max|logit difference| / max|logit| against the reference logits, and the share of positions whose
# argmax must agree. f32 is the exactness test. The others lose precision in the weights and, in llama.cpp's CPU
# kernels, in the activations (F16/BF16 matmuls round the activations too): measured worst cases over the Llama
# fixtures were f16 1.2e-3, bf16 6.7e-3, q8_0 1.9e-2 (argmax at 15 of 16 positions or better).
BOUNDS = {"f32": (1e-3, 1.0), "f16": (3e-3, 0.9), "bf16": (1.5e-2, 0.85), "q8_0": (5e-2, 0.85)}


def llama_logits(path, ids):
    """llama.cpp's logits at every position (F32 KV cache, flash attention off)."""
    from llamacpp import LlamaModel

    with LlamaModel(path) as model:
        return model.logits(ids)


def gguf_value(reader, key):
    """A metadata value of a gguf.GGUFReader as a Python value."""
    return reader.fields[key].contents()


def relative_error(got, ref):
    return float(abs(got - ref).max() / abs(ref).max())


@pytest.fixture(scope="session")
def llama_fixtures():
    return LLAMA
