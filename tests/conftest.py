import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
FIXTURES = TESTS / "fixtures"
LLAMA = FIXTURES / "llama"
TOKENIZER = LLAMA / "tokenizer" / "tokenizer.model"
sys.path.insert(0, str(TESTS))     # the llama.cpp oracle helper (tests/llamacpp.py)


def convert(ckpt, out, *options, map_name="llama2", tokenizer=TOKENIZER, quiet=True):
    """Run the converter in-process like the CLI does; returns the exit status. ``quiet``: -q (errors only)."""
    from gguf_out.cli import main

    args = [str(ckpt), map_name, str(out), "--tokenizer", str(tokenizer), *(["-q"] if quiet else []),
            *map(str, options)]
    return main(args)


# Bounds on max|logit difference| / max|logit| against the reference logits, and the share of positions whose
# argmax must agree. f32 is the exactness test. The others lose precision in the weights and, in llama.cpp's CPU
# kernels, in the activations (F16/BF16 matmuls round the activations too): measured worst cases over the Llama
# fixtures were f16 1.2e-3, bf16 6.7e-3, q8_0 1.9e-2 (argmax at 15 of 16 positions or better). The mixture-of-experts
# fixtures (seeds chosen for decisive routing, tests/gen_moe_fixtures.py) measured f16 1.3e-3, bf16 8.1e-3,
# q8_0 2.5e-2 (argmax 16 of 17 or better): a perturbed token can pick another expert, which moves its logits a lot.
BOUNDS = {"f32": (1e-3, 1.0), "f16": (3e-3, 0.9), "bf16": (1.5e-2, 0.85), "q8_0": (5e-2, 0.85)}
# DeepSeek-V3's tiny fixtures (MLA with a 32-wide latent, sigmoid routing over expert groups: a token whose group
# choice moves changes its logits wholesale) measured q8_0 6.1e-2 and bf16 1.9e-2 (argmax 17 of 18 or better), so
# their quantized types get these bounds; f32 and f16 keep BOUNDS.
BOUNDS_GROUPED_ROUTING = dict(BOUNDS, bf16=(3e-2, 0.85), q8_0=(1e-1, 0.85))


def llama_logits(path, ids):
    """llama.cpp's logits at every position (F32 KV cache, flash attention off)."""
    from llamacpp import LlamaModel

    with LlamaModel(path) as model:
        return model.logits(ids)


def llama_logits_isolated(path, ids):
    """llama_logits in a child process: a file llama.cpp rejects with an assertion aborts that process, not the
    test run. Returns the logits, or raises RuntimeError with the child's exit status and last stderr line."""
    import subprocess
    import tempfile

    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "logits.npy"
        code = ("import sys, numpy as np; sys.path.insert(0, sys.argv[1]); from llamacpp import LlamaModel\n"
                "with LlamaModel(sys.argv[2]) as m: np.save(sys.argv[3], m.logits([int(i) for i in sys.argv[4:]]))")
        run = subprocess.run([sys.executable, "-c", code, str(TESTS), str(path), str(out), *map(str, ids)],
                             capture_output=True, text=True, timeout=300)
        if run.returncode != 0 or not out.exists():
            last = (run.stderr.strip().splitlines() or [""])[-1]
            raise RuntimeError(f"llama.cpp exited with status {run.returncode}: {last}")
        return np.load(out)


def write_ckpt(path, entries):
    """A plain .ckpt from [(name, MindSpore dtype name, array)] (same wire format MindSpore writes)."""
    import numpy as np

    from msckpt.schema import message_class

    msg = message_class("checkpoint", "Checkpoint")()
    for name, dtype, array in entries:
        value = msg.value.add()
        value.tag = name
        value.tensor.dims.extend(array.shape)
        value.tensor.tensor_type = dtype
        value.tensor.tensor_content = np.ascontiguousarray(array).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(msg.SerializeToString())


def gguf_value(reader, key):
    """A metadata value of a gguf.GGUFReader as a Python value."""
    return reader.fields[key].contents()


def relative_error(got, ref):
    return float(abs(got - ref).max() / abs(ref).max())


@pytest.fixture(scope="session")
def llama_fixtures():
    return LLAMA
